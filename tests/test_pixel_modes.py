"""Every pixel mode Pillow opens is decoded to the right 8-bit values, in the decode into the cache and in the
stream: 16-bit, 32-bit integer and float images are scaled (Pillow's own conversion would clip them at 255),
alpha is dropped, palettes, CMYK, YCbCr and LAB become RGB; pixels that cannot be scaled are refused by file or
row. Each case compares the decoded images with the 8-bit image they encode."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from framework._config.compose import compose
from framework._data.data import load_image_data
from framework._data.decoding import scale_to_uint8
from framework._base.errors import RtlabError

SIZE = 8
RNG = np.random.default_rng(0)
GRAY = RNG.integers(0, 256, (SIZE, SIZE)).astype(np.uint8)  # the 8-bit image each gray case encodes
COLOUR = RNG.integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)
ALPHA = RNG.integers(0, 256, (SIZE, SIZE)).astype(np.uint8)


def _encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def _sixteen(gray: np.ndarray) -> np.ndarray:
    """16-bit values that round to ``gray`` (with the low-byte noise a real 16-bit image has)."""
    exact = gray.astype(np.int64) * 257
    return np.clip(exact + RNG.integers(-120, 121, gray.shape), 0, 65535).astype(np.uint16)


def _palette() -> tuple[Image.Image, np.ndarray]:
    p = Image.fromarray(COLOUR).quantize(16)
    return p, np.asarray(p.convert("RGB"))


def _cases() -> dict[str, tuple]:
    """mode name → (file bytes, the expected 8-bit pixels (H, W) or (H, W, 3), tolerance in 1/255, mode opened)."""
    p, p_rgb = _palette()
    pa = p.convert("PA")
    pa.putalpha(Image.fromarray(ALPHA))
    i16 = _sixteen(GRAY)
    ycc, lab = Image.fromarray(COLOUR).convert("YCbCr"), Image.fromarray(COLOUR).convert("LAB")
    cases = {
        "1": (_encode(Image.fromarray(GRAY > 127), "PNG"), np.where(GRAY > 127, 255, 0), 0),
        "L": (_encode(Image.fromarray(GRAY), "PNG"), GRAY, 0),
        "LA": (_encode(Image.frombytes("LA", (SIZE, SIZE), np.dstack([GRAY, ALPHA]).tobytes()), "PNG"), GRAY, 0),
        "P": (_encode(p, "PNG"), p_rgb, 0),
        "PA": (_encode(pa, "TIFF"), p_rgb, 0),
        "RGB": (_encode(Image.fromarray(COLOUR), "PNG"), COLOUR, 0),
        "RGBA": (_encode(Image.fromarray(np.dstack([COLOUR, ALPHA])), "PNG"), COLOUR, 0),
        "CMYK": (_encode(Image.fromarray(COLOUR).convert("CMYK"), "TIFF"), COLOUR, 1),
        # colour spaces of 8-bit channels: the RGB they stand for (not within 1 of COLOUR: 8-bit LAB is coarse)
        "YCbCr": (_encode(ycc, "TIFF"), np.asarray(ycc.convert("RGB")), 0),
        "LAB": (_encode(lab, "TIFF"), np.asarray(lab.convert("RGB")), 0),
        "I;16": (_encode(Image.fromarray(i16), "PNG"), GRAY, 0),  # a 16-bit grayscale PNG
        "I;16B": (_encode(Image.frombytes("I;16B", (SIZE, SIZE), i16.astype(">u2").tobytes()), "TIFF"), GRAY, 0),
        "I": (_encode(Image.fromarray(i16.astype(np.int32)), "TIFF"), GRAY, 0),
        "F": (_encode(Image.fromarray(GRAY.astype(np.float32) / 255.0), "TIFF"), GRAY, 0),  # [0, 1]
        "F 0-255": (_encode(Image.fromarray(GRAY.astype(np.float32)), "TIFF"), GRAY, 0),
    }
    return cases


CASES = _cases()


def _parquet(path, images: list[bytes]) -> None:
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    rows = {"image": [{"bytes": b, "path": f"img_{i}.tif"} for i, b in enumerate(images)],
            "label": [i % 2 for i in range(len(images))]}
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))


def _load(pm, folder, storage: str):
    over = ["data=hf", f"data.path={folder}", "data.train_size=null", "data.test_size=null",
            "data.test_fraction=0.25", f"data.storage={storage}", "data.workers=0"]
    return load_image_data(pm.registry, compose(over, pm.registry).data)


def test_the_cases_open_in_the_modes_they_test():
    opened = {name: Image.open(io.BytesIO(blob)).mode for name, (blob, _, _) in CASES.items()}
    assert opened == {**{name: name for name in CASES}, "F 0-255": "F"}


@pytest.mark.parametrize("mode", sorted(CASES))
@pytest.mark.parametrize("storage", ["disk", "stream"])
def test_every_mode_decodes_to_the_8_bit_image_it_encodes(pm, tmp_path, mode, storage):
    blob, want, tol = CASES[mode]
    _parquet(tmp_path / "pq" / "train.parquet", [blob] * 8)
    data = _load(pm, tmp_path / "pq", storage)
    images = torch.cat([data.train.images[:], data.test.images[:]])
    want = torch.as_tensor(np.array(want, dtype=np.uint8))
    want = want[None].expand(3, -1, -1) if want.ndim == 2 else want.permute(2, 0, 1)
    channels = 1 if mode in ("1", "L", "LA", "I;16", "I;16B", "I", "F", "F 0-255") else 3
    assert images.shape == (8, channels, SIZE, SIZE)
    got = images.to(torch.int16)
    diff = (got - want[:channels].to(torch.int16)).abs()
    assert int(diff.max()) <= tol, (mode, storage, int(diff.max()))
    # the statistics a run normalises with: the mean of the encoded 8-bit image, not a clipped one
    assert data.mean == pytest.approx(tuple((want[:channels].double() / 255).mean((1, 2)).tolist()),
                                      abs=max(tol, 0.5) / 255)


def test_a_16_bit_png_is_scaled_not_clipped(pm, tmp_path):
    """The reported case: 16-bit grayscale values around 0.375 of their range train as 0.375, not as white."""
    values = np.full((SIZE, SIZE), int(0.375 * 65535), np.uint16)
    _parquet(tmp_path / "pq" / "train.parquet", [_encode(Image.fromarray(values), "PNG")] * 8)
    for storage in ("disk", "stream"):
        assert _load(pm, tmp_path / "pq", storage).mean == pytest.approx((0.375,), abs=0.5 / 255), storage


BAD = {
    "F": (Image.fromarray(np.linspace(-1, 2.5, SIZE * SIZE, dtype=np.float32).reshape(SIZE, SIZE)),
          "floats from -1 to 2.5, outside [0, 1] and [0, 255]"),
    "F nan": (Image.fromarray(np.full((SIZE, SIZE), np.nan, np.float32)), "hold NaN or infinite values"),
    "I": (Image.fromarray(np.full((SIZE, SIZE), 70000, np.int32)), "integers from 70000 to 70000, outside "
          "0–65535; save them as 8-bit (uint8) or 16-bit (uint16) images"),
}


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("storage", ["disk", "stream"])
def test_pixels_that_cannot_be_scaled_are_refused_by_file_or_row(pm, tmp_path, case, storage):
    im, fragment = BAD[case]
    good = _encode(Image.fromarray(GRAY.astype(np.float32) / 255), "TIFF")
    _parquet(tmp_path / "pq" / "train.parquet", [good] * 3 + [_encode(im, "TIFF")] + [good] * 4)
    with pytest.raises(RtlabError) as info:
        data = _load(pm, tmp_path / "pq", storage)
        data.train.images[:], data.test.images[:]
    message = str(info.value)
    assert fragment in message, message
    assert ("img_3.tif" in message) if storage == "disk" else ("row " in message), message


def test_arrays_are_scaled_by_their_type():
    gray = GRAY[None]
    assert np.array_equal(scale_to_uint8(gray.astype(np.uint16) * 257, "x"), gray)
    assert np.array_equal(scale_to_uint8(gray.astype(np.int64), "x"), gray)
    assert np.array_equal(scale_to_uint8(gray.astype(np.float64) / 255, "x"), gray)
    assert np.array_equal(scale_to_uint8(gray > 127, "x"), np.where(gray > 127, 255, 0))
    with pytest.raises(RtlabError, match="int32 integers from 0 to 70000, outside 0–255"):
        scale_to_uint8(np.array([[0, 70000]], np.int32), "the image arrays")
    with pytest.raises(RtlabError, match=r"floats from -0.5 to 0.5, outside \[0, 1\] and \[0, 255\]"):
        scale_to_uint8(np.array([[-0.5, 0.5]], np.float32), "the image arrays")


def test_16_bit_arrays_of_a_saved_dataset_are_scaled(pm, tmp_path):
    import datasets

    images = np.stack([_sixteen(GRAY)] * 10)
    features = datasets.Features(image=datasets.Array2D((SIZE, SIZE), "uint16"),
                                 label=datasets.ClassLabel(names=["a", "b"]))
    datasets.Dataset.from_dict({"image": images, "label": [i % 2 for i in range(10)]},
                               features=features).save_to_disk(str(tmp_path / "ds"))
    data = load_image_data(pm.registry, compose(["data=hf", f"data.path={tmp_path / 'ds'}", "data.train_size=null",
                                                 "data.test_size=null", "data.storage=disk"], pm.registry).data)
    assert torch.equal(data.train.images[:][:, 0], torch.as_tensor(GRAY)[None].expand(len(data.train), -1, -1))
