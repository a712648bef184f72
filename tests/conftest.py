"""Shared fixtures: offline environment, throw-away caches, generated datasets, the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# Fast settings for runs that only need to go through the loop: a tiny timm ResNet and a small head.
TINY = [
    "backbone=test_resnet",
    "head.hidden_dims=[64]",
    "head.bottleneck_dim=32",
    "head.out_dim=128",
    "train.batch_size=64",
    "train.epochs=1",
    "eval.every=0",
    "progress.enabled=false",
]


@pytest.fixture(scope="session", autouse=True)
def offline_env(tmp_path_factory):
    """No network, caches in a throw-away folder, plugins from this checkout only."""
    cache = tmp_path_factory.mktemp("cache")
    env = {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "RTLAB_CACHE_DIR": str(cache / "rtlab"),
        "HF_DATASETS_CACHE": str(cache / "hf"),
        "MPLBACKEND": "Agg",
        # runs the tests compare must not pick their thread count from the load average of the moment
        "RTLAB_KEEP_THREADS": "1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(autouse=True)
def restore_logging():
    """In-process ``rtlab train`` lets Hydra configure logging with handlers bound to pytest's capture streams;
    put the root logger back after each test so later tests do not log into closed streams."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def pm():
    """A fresh plugin manager with the built-in plugins (entry points not loaded)."""
    from framework._contract.plugin_manager import create_plugin_manager

    return create_plugin_manager(autoload=False)


def run_cli(*args: str, env: dict | None = None, timeout: float = 600, cwd: Path | None = None
            ) -> subprocess.CompletedProcess:
    """``rtlab ARGS`` in a fresh interpreter (exactly what a user runs), capturing output."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "framework.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=str(cwd or ROOT))


@pytest.fixture
def cli():
    return run_cli


def write_class_images(root: Path, classes: int = 3, per_class: int = 12, size: int = 16, mode: str = "RGB",
                       suffix: str = ".png", seed: int = 0) -> None:
    """Class folders of images whose class is visible (a class-specific mean colour and stripe pattern)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(exist_ok=True)
        for i in range(per_class):
            base = np.zeros((size, size, 3), np.float32)
            base[..., c % 3] = 160
            base[:, (c * 3) % size::classes + 1] += 80
            img = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
            im = Image.fromarray(img)
            if mode != "RGB":
                im = im.convert(mode)
            im.save(folder / f"{i}{suffix}")


def write_parquet(path: Path, n: int, classes: int = 3, size: int = 12, mode: str = "RGB", seed: int = 0,
                  row_group: int = 40, bad_row: int | None = None) -> None:
    """An HF-style parquet file (an ``Image`` column of PNG bytes, a ``ClassLabel``) in row groups of
    ``row_group``; the class is visible in the pixels."""
    import datasets
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        c = i % classes
        base = np.zeros((size, size, 3), np.float32)
        base[..., c % 3] = 160
        base[:, c::classes + 1] += 80
        im = Image.fromarray(np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8))
        images.append(im if mode == "RGB" else im.convert(mode))
        labels.append(c)
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=[f"c{i}" for i in range(classes)])})
    ds = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path))
    table = pq.read_table(path)
    if bad_row is not None:
        import pyarrow as pa

        col = table.column("image").to_pylist()
        col[bad_row] = {"bytes": b"not an image", "path": None}
        table = table.set_column(0, "image", pa.array(col, type=table.schema.field("image").type))
    pq.write_table(table, path, row_group_size=row_group)  # keeps the schema's HF metadata


@pytest.fixture
def imagefolder(tmp_path):
    """A train/test imagefolder dataset with 3 learnable classes of 16x16 RGB images."""
    root = tmp_path / "images"
    write_class_images(root / "train", per_class=12, seed=0)
    write_class_images(root / "test", per_class=4, seed=1)
    return root
