"""Dataset sources: any Hugging Face dataset (hub id or local files), local image folders and offline built-ins.

* ``hf`` — ``data.path`` is a hub id (``uoft-cs/cifar10``), a local ``save_to_disk`` folder, a folder of
  parquet/arrow/image files, or one parquet/arrow file;
* ``imagefolder`` — ``data.path`` holds class folders of images, optionally under ``train/`` and ``test/``;
* ``fashion_mnist`` — Debian's ``dataset-fashion-mnist`` IDX files (else the hub copy when online);
* ``digits`` — scikit-learn's 8x8 handwritten digits (1,797 images, 20 % held out as the test split).
"""

from __future__ import annotations

import gzip
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from framework.api import DataOptions, hookimpl, listing_key, RtlabError

OFFLINE_HINT = ("use local data instead: data=imagefolder data.path=DIR, data=hf data.path=/path/to/parquet_or_"
                "saved_dataset, or a built-in (data=fashion_mnist, data=digits)")


def _offline() -> bool:
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    return False


def _as_dict(ds: Any) -> dict[str, Any]:
    import datasets

    if isinstance(ds, (datasets.DatasetDict, dict)):
        return dict(ds)
    return {"train": ds}


def load_hf(path: str, config_name: Optional[str] = None, revision: Optional[str] = None) -> dict[str, Any]:
    """Splits of a hub dataset or of local files, as ``datasets.Dataset`` objects."""
    import datasets

    p = Path(path).expanduser()
    if p.exists():
        if p.is_dir() and ((p / "dataset_dict.json").exists() or (p / "state.json").exists()):
            return _as_dict(datasets.load_from_disk(str(p)))
        if p.is_file():
            kind = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".json": "json",
                    ".jsonl": "json"}.get(p.suffix)
            if kind is None:
                raise RtlabError(f"data.path {p} is a {p.suffix or 'suffix-less'} file; give a parquet or arrow "
                                 "file, an image folder or a save_to_disk folder")
            return _as_dict(datasets.load_dataset(kind, data_files=str(p)))
        try:
            return _as_dict(datasets.load_dataset(str(p)))
        except (FileNotFoundError, ValueError) as exc:
            raise RtlabError(f"no dataset found in {p} ({' '.join(str(exc).split())[:120]}); it should hold "
                             "class folders of images, parquet/arrow files or a save_to_disk dataset") from None
    if path.startswith(("/", "./", "../", "~")):
        raise RtlabError(f"data.path {path} does not exist; give an existing folder or file, or a hub id")
    if _offline():
        raise RtlabError(f"cannot load '{path}' from the Hugging Face Hub while offline (HF_HUB_OFFLINE/"
                         f"HF_DATASETS_OFFLINE is set); give a local copy with data.path=DIR (a folder of parquet/"
                         f"arrow files or a save_to_disk folder), or {OFFLINE_HINT}")
    try:
        return _as_dict(datasets.load_dataset(path, name=config_name, revision=revision))
    except (ConnectionError, OSError) as exc:
        raise RtlabError(f"cannot reach '{path}' on the Hugging Face Hub ({type(exc).__name__}); {OFFLINE_HINT}"
                         ) from None
    except Exception as exc:
        if type(exc).__name__ in ("DatasetNotFoundError", "FileNotFoundError", "HfHubHTTPError"):
            raise RtlabError(f"dataset '{path}' was not found on the Hugging Face Hub; check the id or "
                             f"{OFFLINE_HINT}") from None
        raise


# ------------------------------------------------------------------------------------------------------- hf
@dataclass
class HFOptions(DataOptions):
    path: Optional[str] = None  # hub id, save_to_disk folder, folder of parquet/arrow/image files, or one such file
    config_name: Optional[str] = None  # the hub dataset's configuration ("name" in datasets.load_dataset)
    revision: Optional[str] = None
    classes: Optional[int] = None  # the expected number of classes: another count fails (e.g. a wrong label column)


def check_class_count(splits: Mapping[str, Any], opts: HFOptions) -> None:
    """Fail when the label column's ClassLabel does not have ``opts.classes`` classes."""
    import datasets

    first = next(iter(splits.values()))
    features = first.features
    column = opts.label_column or next((c for c in features if isinstance(features[c], datasets.ClassLabel)), None)
    feature = features.get(column) if column else None
    if isinstance(feature, datasets.ClassLabel) and feature.num_classes != opts.classes:
        raise RtlabError(f"dataset '{opts.path}' column '{column}' has {feature.num_classes} classes, not the "
                         f"expected data.classes={opts.classes}; set data.label_column (e.g. fine_label) or "
                         "data.classes")


class HFSource:
    """Any Hugging Face dataset: a hub id or local files."""

    def __init__(self, opts: HFOptions) -> None:
        if not opts.path:
            raise RtlabError("data=hf needs data.path (a hub id such as uoft-cs/cifar10, or a local folder/file)")
        self.opts = opts

    def cache_key(self) -> Optional[str]:
        """Local files: their listing; a hub dataset: its commit (``data.revision`` when it is one, else asked
        of the Hub); None (the cache falls back to the ``datasets`` fingerprint) when neither is known."""
        p = Path(self.opts.path).expanduser()
        if p.exists():
            return f"files:{listing_key(p)}"
        rev = self.opts.revision
        if rev and re.fullmatch(r"[0-9a-f]{40}", rev):
            return f"hub:{self.opts.path}:{self.opts.config_name}@{rev}"
        if _offline() or self.opts.path.startswith(("/", "./", "../", "~")):
            return None
        try:
            from huggingface_hub import HfApi

            sha = HfApi().dataset_info(self.opts.path, revision=rev).sha
        except Exception:  # unreachable or unknown: load() reports it
            return None
        return f"hub:{self.opts.path}:{self.opts.config_name}@{sha}" if sha else None

    def stream_files(self) -> dict[str, list[str]]:
        """Split → parquet files, for ``data.storage=stream`` (local files, or a hub dataset's when online)."""
        from framework.api import stream_files_of

        local = Path(self.opts.path).expanduser()
        if not local.exists() and (_offline() or self.opts.path.startswith(("/", "./", "../", "~"))):
            raise RtlabError(f"data.storage=stream: '{self.opts.path}' is not a local file or folder and the Hub is "
                             f"offline; give local parquet files with data.path=DIR")
        return stream_files_of(self.opts.path, self.opts.config_name, self.opts.revision)

    def load(self) -> Mapping[str, Any]:
        splits = load_hf(self.opts.path, self.opts.config_name, self.opts.revision)
        if self.opts.classes is not None and splits:
            check_class_count(splits, self.opts)
        return splits


# ------------------------------------------------------------------------------------------------ imagefolder
@dataclass
class ImageFolderOptions(DataOptions):
    path: Optional[str] = None  # a folder of class folders (optionally under train/ and test/)


class ImageFolderSource:
    """Class folders of JPEG/PNG/… images, through the ``imagefolder`` builder of ``datasets``."""

    def __init__(self, opts: ImageFolderOptions) -> None:
        if not opts.path:
            raise RtlabError("data=imagefolder needs data.path=DIR (class folders of images, optionally under "
                             "train/ and test/)")
        self.path = Path(opts.path).expanduser()
        if not self.path.is_dir():
            raise RtlabError(f"data.path {self.path} is not a folder; point it at a folder of class folders")

    def cache_key(self) -> str:
        """The folder's listing (paths, sizes, mtimes): a cache hit needs no rescan by ``datasets``."""
        return f"files:{listing_key(self.path)}"

    def load(self) -> Mapping[str, Any]:
        import datasets

        try:
            # labels from the class folders even when there is only one (datasets would drop them), so that a
            # one-class folder is reported as such and not as a dataset without labels
            return _as_dict(datasets.load_dataset("imagefolder", data_dir=str(self.path), drop_labels=False))
        except (FileNotFoundError, ValueError) as exc:
            raise RtlabError(f"no images found under {self.path} ({' '.join(str(exc).split())[:100]}); expected "
                             "class folders of image files") from None


# ---------------------------------------------------------------------------------------------- Fashion-MNIST
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
FASHION_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                 "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise RtlabError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise RtlabError(f"{path} is truncated ({arr.size} of {int(np.prod(shape))} values)")
    return arr.reshape(shape)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).exists():
            return folder / name
    return None


@dataclass
class FashionMNISTOptions(DataOptions):
    path: str = "/usr/share/datasets/fashion-mnist"  # folder of the four IDX files (Debian's package)
    hub_id: str = "zalando-datasets/fashion_mnist"  # used when the folder is missing and the hub is reachable


class FashionMNISTSource:
    """Fashion-MNIST (60,000 train / 10,000 test 28x28 grayscale images, 10 classes)."""

    mean = (0.2860,)
    std = (0.3530,)

    def __init__(self, opts: FashionMNISTOptions) -> None:
        self.opts = opts

    def _files(self) -> dict[str, tuple[Path | None, Path | None]]:
        folder = Path(self.opts.path)
        return {s: (_find(folder, i), _find(folder, lab)) for s, (i, lab) in FASHION_FILES.items()}

    def cache_key(self) -> Optional[str]:
        files = [f for pair in self._files().values() for f in pair]
        if not all(files):
            return None
        return "fashion-mnist:" + ":".join(listing_key(f) for f in files)

    def load(self) -> Mapping[str, Any]:
        import datasets

        folder = Path(self.opts.path)
        files = self._files()
        if all(a and b for a, b in files.values()):
            features = datasets.Features(image=datasets.Array2D((28, 28), "uint8"),
                                         label=datasets.ClassLabel(names=FASHION_CLASSES))
            return {split: datasets.Dataset.from_dict({"image": read_idx(img), "label": read_idx(lab)},
                                                      features=features, split=split)
                    for split, (img, lab) in files.items()}
        if not _offline():
            try:
                return load_hf(self.opts.hub_id)
            except RtlabError:
                pass
        raise RtlabError(f"Fashion-MNIST IDX files are not in {folder}; install them with "
                         "'apt-get install dataset-fashion-mnist' (or set data.path to their folder)")


# ------------------------------------------------------------------------------------------------------ digits
@dataclass
class DigitsOptions(DataOptions):
    pass


class DigitsSource:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes; 20 % held out for testing)."""

    def __init__(self, opts: DigitsOptions) -> None:
        self.opts = opts

    def cache_key(self) -> str:
        import sklearn

        return f"sklearn-digits:{sklearn.__version__}"

    def load(self) -> Mapping[str, Any]:
        import datasets
        from sklearn.datasets import load_digits

        d = load_digits()
        images = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        features = datasets.Features(image=datasets.Array2D((8, 8), "uint8"),
                                     label=datasets.ClassLabel(names=[str(i) for i in range(10)]))
        return {"train": datasets.Dataset.from_dict({"image": images, "label": d.target.astype(np.int64)},
                                                    features=features)}


@hookimpl
def rtlab_register(registry):
    registry.add("dataset", "hf", HFSource, HFOptions)
    registry.add("dataset", "imagefolder", ImageFolderSource, ImageFolderOptions)
    registry.add("dataset", "fashion_mnist", FashionMNISTSource, FashionMNISTOptions)
    registry.add("dataset", "digits", DigitsSource, DigitsOptions)
