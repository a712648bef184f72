"""``rtlab bench --data``: training steps/s with the images on the device, in host memory, on disk or streamed.

One run per ``data.storage`` mode, all on the same images: random JPEGs written once into a throw-away parquet
folder (HF ``Image`` column), which ``device``/``host``/``disk`` decode into a throw-away cache (``disk`` reads the
very file a real run would) and ``stream`` decodes batch by batch from the parquet shards (``data.workers``
processes), with the same networks and the same batch. The modes take turns segment by segment (a segment is one
epoch of the real loop: ``Run.batches`` with its prefetching and ``Run.train_step``), so a change of machine load
hits every mode alike; medians are reported, with each mode's steps/s relative to ``device``.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Any

import torch

MODES = ("device", "host", "disk", "stream")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _segment(run) -> float:
    """Seconds for one epoch of the real loop (every batch of the epoch's permutation, prefetched as in fit)."""
    _sync(run.device)
    t0 = time.perf_counter()
    run.train_epoch()
    _sync(run.device)
    return time.perf_counter() - t0


def write_jpeg_parquet(folder: str, n: int, channels: int, size: int, row_group: int = 256) -> None:
    """``folder/train.parquet`` with ``n`` random ``channels`` x ``size`` x ``size`` JPEGs and ``test.parquet``
    with 8, as the Hub's parquet exports store images (``{"bytes", "path"}`` structs, HF metadata)."""
    import io

    import datasets
    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(0)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    os.makedirs(folder, exist_ok=True)
    for split, rows in (("train", n), ("test", 8)):
        images = []
        for _ in range(rows):
            arr = rng.integers(0, 256, (size, size, channels), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr[..., 0] if channels == 1 else arr).save(buf, format="JPEG", quality=90)
            images.append({"bytes": buf.getvalue(), "path": None})
        ds = datasets.Dataset.from_dict({"image": images, "label": (np.arange(rows) % 10).tolist()},
                                        features=features)
        path = os.path.join(folder, f"{split}.parquet")
        ds.to_parquet(path)
        pq.write_table(pq.read_table(path), path, row_group_size=row_group)


def bench_data_path(backbone: str, channels: int, size: int, out_dim: int, stem: str, batch: int, steps: int,
                    repeats: int, device: str, precision: str) -> dict[str, Any]:
    """Steps/s of each storage mode (medians of ``repeats`` interleaved segments of ``steps`` steps)."""
    from framework.api import compose, create_plugin_manager, Run

    overrides = [
        f"backbone={backbone}", f"backbone.stem={stem}", f"head.out_dim={out_dim}", "data=hf",
        "data.train_size=null", "data.test_size=null", f"data.channels={channels}",
        f"train.batch_size={batch}", "train.epochs=1", f"train.device={device}", f"train.precision={precision}",
        f"train.log_every={10 ** 9}", "eval.before=false", "eval.every=0", "evaluator=[]", "checkpoint.final=false",
        "tensorboard.enabled=false", "progress.enabled=false", "train.drop_last=true", "student=copy",
        "train.state_every=0", "objective.cache_teacher=false",
    ]
    pm = create_plugin_manager(autoload=False)
    old_cache = os.environ.get("RTLAB_CACHE_DIR")
    times: dict[str, list[float]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        write_jpeg_parquet(os.path.join(tmp, "parquet"), batch * steps, channels, size)
        overrides.append(f"data.path={os.path.join(tmp, 'parquet')}")
        os.environ["RTLAB_CACHE_DIR"] = os.path.join(tmp, "cache")
        try:
            runs = {m: Run(compose(overrides + [f"data.storage={m}"], pm.registry), os.path.join(tmp, m), pm)
                    .setup() for m in MODES}
        finally:
            if old_cache is None:
                os.environ.pop("RTLAB_CACHE_DIR", None)
            else:
                os.environ["RTLAB_CACHE_DIR"] = old_cache
        try:
            for run in runs.values():  # warm-up segment
                _segment(run)
            for _ in range(repeats):
                for mode, run in runs.items():
                    times[mode].append(_segment(run))
        finally:
            for run in runs.values():
                run.release()
        dev = str(next(iter(runs.values())).device)
    rates = {m: steps / statistics.median(t) for m, t in times.items()}
    return {"backbone": backbone, "input": f"{channels}x{size}x{size}", "out_dim": out_dim, "batch": batch,
            "steps": steps, "repeats": repeats, "device": dev,
            "steps_per_s": {m: round(r, 4) for m, r in rates.items()},
            "over_device": {m: round(r / rates["device"], 3) for m, r in rates.items()},
            "segments_s": {m: [round(x, 3) for x in t] for m, t in times.items()}}


def print_data_path(r: dict[str, Any]) -> None:
    print(f"data path: {r['backbone']} {r['input']} out_dim {r['out_dim']} batch {r['batch']} ({r['device']}), "
          f"medians of {r['repeats']} interleaved segments of {r['steps']} steps", flush=True)
    print(f"{'storage':<10}{'steps/s':>10}{'vs device':>11}", flush=True)
    for m in r["steps_per_s"]:
        print(f"{m:<10}{r['steps_per_s'][m]:>10.3f}{r['over_device'][m]:>11.3f}", flush=True)
