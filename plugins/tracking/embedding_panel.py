"""The 2-D embedding panel of ``rtlab report``: teacher and student test embeddings of a finished run, projected by
PCA and by t-SNE (scikit-learn), one colour per class.

As a plugin it saves those embeddings when a run ends (``features/embedding.safetensors``: the first
``embedding.points`` test images' embeddings of the final teacher and student, and their labels), so ``rtlab
report`` draws the panel without decoding the data and rebuilding the networks. For a run without the file (older
runs, ``embedding.save=false``) the report computes the embeddings from the final checkpoint once and saves them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from framework.api import hookimpl, paths

MAX_POINTS = 1000  # test images drawn (the first ones): t-SNE's cost grows with the square of the count
PCA_DIMS = 50  # t-SNE runs on the first principal components (scikit-learn's advice for dense data)
FEATURES = Path("features") / "embedding.safetensors"


@dataclass
class EmbeddingSettings:
    save: bool = True  # save the panel's test embeddings at the end of a run (features/embedding.safetensors)
    points: int = MAX_POINTS  # how many test images (the first ones)


@torch.no_grad()
def _embed(net: Any, images: torch.Tensor, normalize: Any, batch: int = 256, autocast: Any = None) -> torch.Tensor:
    import contextlib

    net.eval()
    out = []
    for i in range(0, len(images), batch):
        with (autocast() if autocast is not None else contextlib.nullcontext()):
            out.append(net.embed(normalize(images[i:i + batch])).float().cpu())
    return torch.cat(out)


def save_features(folder: Path, teacher: torch.Tensor, student: torch.Tensor, labels: torch.Tensor, step: Any,
                  classes: Any = None) -> Path:
    """``features/embedding.safetensors``: the panel's embeddings of the weights at optimiser step ``step``."""
    import json

    from safetensors.torch import save

    from framework.api import atomic_write_bytes

    path = Path(folder) / FEATURES
    tensors = {"teacher": teacher.contiguous(), "student": student.contiguous(), "labels": labels.contiguous()}
    meta = {"step": str(step), "classes": json.dumps([str(c) for c in classes] if classes is not None else None)}
    atomic_write_bytes(path, save(tensors, metadata=meta))
    return path


def load_features(folder: Path, step: Any) -> tuple[dict[str, torch.Tensor], Any] | None:
    """(embeddings, class names) the run in ``folder`` saved, when they are of its final weights (``step``)."""
    import json

    from safetensors import safe_open

    path = Path(folder) / FEATURES
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if step is not None and meta.get("step") != str(step):
                return None
            return {k: f.get_tensor(k) for k in f.keys()}, json.loads(meta.get("classes") or "null")
    except Exception:  # a torn or foreign file: computed again
        return None


@hookimpl
def rtlab_register(registry):
    registry.add_settings("embedding", EmbeddingSettings)


@hookimpl
def rtlab_run_end(run, summary):
    from omegaconf import OmegaConf

    settings = run.cfg.embedding
    # the panel is drawn from a run's final checkpoint: without one there is nothing to draw
    if not settings.save or not run.data.test.labelled or not OmegaConf.select(run.cfg, "checkpoint.final",
                                                                                   default=True):
        return
    n = min(int(settings.points), len(run.data.test))
    images = run.data.test.images[:n]
    modes = [(net, net.training) for net in (run.teacher, run.student)]
    parts = {name: _embed(net, images, run.prepare, run.cfg.eval.batch_size, run.autocast)
             for name, net in (("teacher", run.teacher), ("student", run.student))}
    for net, mode in modes:
        net.train(mode)
    save_features(run.out_dir, parts["teacher"], parts["student"], run.data.test.labels[:n].cpu(), run.step,
                  getattr(run.data, "classes", None))


def _from_checkpoint(folder: Path, registry: Any, max_points: int) -> tuple[dict[str, torch.Tensor], Any] | None:
    from omegaconf import OmegaConf

    from framework.api import Progress, load_image_data, network_from_checkpoint

    data = load_image_data(registry, OmegaConf.load(paths.config(folder)).data)
    if not data.test.labelled:
        return None
    images = data.test.images[:max_points]
    normalize = data.normalizer("cpu")
    out: dict[str, Any] = {"labels": data.test.labels[:max_points]}
    step = None
    for part in ("teacher", "student"):
        with Progress(f"{folder.name}: {part} embeddings for the panel", len(images), "images") as p:
            net, meta = network_from_checkpoint(registry, paths.final(folder), part)
            out[part] = _embed(net, images, normalize)
            step = meta.get("step")
            p.update(len(images))
    classes = getattr(data, "classes", None)
    save_features(folder, out["teacher"], out["student"], out["labels"], step, classes)
    return out, classes


def embedding_panel(folder: Path, registry: Any, max_points: int = MAX_POINTS) -> Path | None:
    """``plots/embedding.png`` of the run in ``folder`` (None without a final checkpoint or without labels): rows
    PCA and t-SNE, columns teacher and student; from the run's saved embeddings when they are of its final
    weights, else from its final checkpoint."""
    import json

    import numpy as np

    from framework.api import Progress
    from plugins.tracking.plotting import pyplot

    if not paths.final(folder).with_suffix(".safetensors").exists() or not paths.config(folder).exists():
        return None
    try:
        step = json.loads(paths.final(folder).with_suffix(".json").read_text())["meta"].get("step")
    except (OSError, ValueError, KeyError):
        step = None
    try:
        test_images = json.loads(paths.summary(folder).read_text()).get("test_images") or max_points
    except (OSError, ValueError):
        test_images = max_points
    found = load_features(folder, step)
    if found is None or len(found[0]["labels"]) < min(max_points, test_images):
        found = _from_checkpoint(folder, registry, max_points)
        if found is None:
            return None
    saved, names = found
    labels = saved["labels"][:max_points].numpy()
    if labels.min() < 0:
        return None
    embeddings = {part: saved[part][:max_points].numpy() for part in ("teacher", "student")}
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 9))
    classes = np.unique(labels)
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    with Progress(f"{folder.name}: embedding panel (PCA and t-SNE of teacher and student)", 4, "projections") as p:
        for col, (part, x) in enumerate(embeddings.items()):
            for row, (method, y) in enumerate(_projections(x)):
                p.update()
                ax = axes[row][col]
                for i, c in enumerate(classes):
                    keep = labels == c
                    label = str(names[c]) if names is not None and c < len(names) else f"class {c}"
                    ax.scatter(y[keep, 0], y[keep, 1], s=6, color=cmap(i % cmap.N), label=label, alpha=0.8)
                ax.set_title(f"{part}: {method} of {len(x)} test embeddings")
                ax.set_xlabel(f"{method} 1")
                ax.set_ylabel(f"{method} 2")
                ax.grid(alpha=0.2)
    handles, legend_labels = axes[0][0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.legend(handles, legend_labels, loc="lower center", ncol=min(len(classes), 10), markerscale=3, fontsize=9,
               title="test images by class", bbox_to_anchor=(0.5, 0.0))
    path = paths.plots(folder) / "embedding.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _projections(x):
    """(PCA, t-SNE) of the rows of ``x``: t-SNE starts from the PCA and runs on the first :data:`PCA_DIMS`
    principal components."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    yield "PCA", PCA(n_components=2, random_state=0).fit_transform(x)
    reduced = PCA(n_components=min(PCA_DIMS, *x.shape), random_state=0).fit_transform(x) if x.shape[1] > PCA_DIMS \
        else x
    perplexity = float(min(30, max(5, (len(x) - 1) // 4)))
    yield "t-SNE", TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=0).fit_transform(reduced)
