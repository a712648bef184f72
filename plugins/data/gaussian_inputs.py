"""Dataset source ``gaussian``: images of pure Gaussian noise, the paper's "random inputs" (docs/paper.md#fig-4).

``train_size`` (default 50,000) training and ``test_size`` (default 1,000) test images of ``channels`` x
``image_size`` x ``image_size`` pixels (default 3 x 32 x 32, CIFAR's shape; Fashion-MNIST's is 1 x 28), drawn with
``seed``. After the source's normalisation every pixel is N(0, σ²) with σ = ``sigma`` (default 1, the scale of
normalised real images; the paper does not state its σ), clipped at ±4σ and stored as uint8 (steps of σ/32), so
the data path treats it like any dataset. The images have no labels: distil on them and probe a real dataset with
``eval.datasets=[NAME]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from framework.api import DataOptions, hookimpl, RtlabError

CLIP = 4.0  # the noise is clipped at ±CLIP σ so that it fits uint8 pixels


@dataclass
class GaussianOptions(DataOptions):
    sigma: float = 1.0  # std of every normalised pixel


def noise_images(n: int, channels: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 images whose pixels are 127.5 + 127.5·z/CLIP, z ~ N(0, 1) clipped at ±CLIP."""
    z = rng.standard_normal((n, channels, size, size), dtype=np.float32)
    return np.clip(np.rint(127.5 + 127.5 * z / CLIP), 0, 255).astype(np.uint8)


class GaussianSource:
    """Gaussian-noise images N(0, σ²) (after normalisation), unlabelled."""

    def __init__(self, opts: GaussianOptions) -> None:
        if opts.sigma <= 0:
            raise RtlabError(f"data.sigma must be positive, got {opts.sigma}")
        self.opts = opts
        self.channels = opts.channels or 3
        if self.channels not in (1, 3):
            raise RtlabError(f"data.channels must be 1 or 3, got {self.channels}")
        # pixel/255 = 0.5 + (0.5/CLIP)·z, so (pixel/255 − 0.5)/std = σ·z for std = 0.5/(CLIP·σ)
        self.mean = (0.5,) * self.channels
        self.std = (0.5 / (CLIP * opts.sigma),) * self.channels

    def cache_key(self) -> str:
        return "gaussian-noise:1"  # the images are a function of the options, which the cache key holds

    def load(self) -> Mapping[str, Any]:
        import datasets

        o = self.opts
        size = o.image_size or 32
        rng = np.random.default_rng(o.seed)
        shape = (self.channels, size, size)
        features = datasets.Features(image=datasets.Array3D(shape, "uint8"))
        return {split: datasets.Dataset.from_dict({"image": noise_images(n, self.channels, size, rng)},
                                                  features=features, split=split)
                for split, n in (("train", o.train_size or 50000), ("test", o.test_size or 1000))}


@hookimpl
def rtlab_register(registry):
    registry.add("dataset", "gaussian", GaussianSource, GaussianOptions)
