"""Batched augmentations: torchvision's definitions, same seed ⇒ same views, multicrop sizes, and a DINO training
step on device with PIL unusable."""

from __future__ import annotations

import pytest
import torch

from plugins.data.augment_ops import (ColorJitter, GaussianBlur, HorizontalFlip, PadCrop, RandomGrayscale,
                                 RandomResizedCrop, Solarize, adjust_hue)
from plugins.data.augmentations import DinoAugmentOptions, FlipCrop, FlipCropOptions, MultiCrop, MultiCropOptions
from tiny_runs import compose_run


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def images():
    return torch.rand(16, 3, 32, 32, generator=gen(1))


def test_same_seed_same_views(images):
    aug = MultiCrop(DinoAugmentOptions())
    a, b, c = aug.views(images, gen(3)), aug.views(images, gen(3)), aug.views(images, gen(4))
    assert len(a) == 12
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_multicrop_views(images):
    views = MultiCrop(MultiCropOptions(local_views=3)).views(images, gen())
    assert [tuple(v.shape) for v in views] == [(16, 3, 32, 32)] * 2 + [(16, 3, 14, 14)] * 3
    assert all(float(v.min()) >= 0.0 and float(v.max()) <= 1.0 for v in views)
    assert MultiCrop(MultiCropOptions(global_size=24, local_size=8)).views(images, gen())[0].shape[-1] == 24


def test_geometry(images):
    whole = RandomResizedCrop(32, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.equal(whole(images, gen()), images)
    assert torch.equal(HorizontalFlip(1.0)(images, gen()), images.flip(-1))
    assert torch.equal(FlipCrop(FlipCropOptions(pad=0, flip=0.0)).views(images, gen())[0], images)
    shifted = PadCrop(4)(images, gen())
    # every output is a 32x32 window of the zero-padded image
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for i in range(4):
        windows = [padded[i, :, r:r + 32, c:c + 32] for r in range(9) for c in range(9)]
        assert any(torch.equal(shifted[i], w) for w in windows)
    top, left, h, w = RandomResizedCrop(32, scale=(0.05, 0.4)).boxes(1000, 32, 32, gen(), "cpu")
    area = h * w / 1024
    assert float(area.min()) >= 0.03 and float(area.max()) <= 0.45
    assert bool(((top >= 0) & (left >= 0) & (top + h <= 32) & (left + w <= 32)).all())


def test_colour_ops_match_torchvision(images):
    tvf = pytest.importorskip("torchvision.transforms.functional")
    shift = torch.full((16,), 0.13)
    expected = torch.stack([tvf.adjust_hue(x, 0.13) for x in images])
    assert torch.allclose(adjust_hue(images, shift), expected, atol=1e-5)
    blurred = GaussianBlur(1.0, (1.3, 1.3))(images, gen())
    assert torch.allclose(blurred, tvf.gaussian_blur(images, [13, 13], [1.3, 1.3]), atol=1e-3)
    gray = RandomGrayscale(1.0)(images, gen())
    assert torch.allclose(gray, tvf.rgb_to_grayscale(images, 3), atol=2e-4)  # torchvision rounds its weights
    sol = Solarize(1.0)(images, gen())
    assert torch.equal(sol, torch.where(images >= 128 / 255, 1 - images, images))
    jitter = ColorJitter(p=1.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    assert torch.allclose(jitter(images, gen()), images, atol=1e-5)  # factors 1 and hue 0: identity
    gray1 = ColorJitter(p=1.0)(images[:, :1], gen())  # single-channel images: brightness/contrast only
    assert gray1.shape == (16, 1, 32, 32)


def test_dino_training_step_needs_no_pil(tmp_path, monkeypatch):
    """Multicrop + DINO's colour pipeline in the training loop, with every PIL image operation disabled."""
    import PIL.Image

    run = compose_run(tmp_path, "augment=dino", "augment.local_views=2", "objective.pairing=opposite",
                      "objective.center_momentum=0.9", "updater=ema", "updater.bn_mode=from_data", "student=copy",
                      "evaluator=[]")

    def no_pil(*args, **kwargs):
        raise AssertionError("PIL used in the training loop")

    for name in ("open", "fromarray", "new", "frombuffer"):
        monkeypatch.setattr(PIL.Image, name, no_pil)
    monkeypatch.setattr(PIL.Image.Image, "__init__", no_pil)
    views = run.augment.views(run.data.train.images[:4].float() / 255, run.aug_gen)
    assert all(v.device == run.device for v in views) and len(views) == 4
    logs = run.train_step(next(run.batches()))
    assert torch.isfinite(logs["train/loss"])
