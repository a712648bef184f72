"""The 2-D embedding panel of ``rtlab report``: teacher and student test embeddings of a finished run, projected by
PCA and by t-SNE (scikit-learn), one colour per class."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

MAX_POINTS = 1000  # test images drawn (the first ones): t-SNE's cost grows with the square of the count


@torch.no_grad()
def _embed(net: Any, images: torch.Tensor, normalize: Any, batch: int = 256) -> torch.Tensor:
    net.eval()
    return torch.cat([net.embed(normalize(images[i:i + batch])).float() for i in range(0, len(images), batch)])


def embedding_panel(folder: Path, registry: Any, max_points: int = MAX_POINTS) -> Path | None:
    """``plots/embedding.png`` of the run in ``folder`` from its final checkpoint (None without one or without
    labels): rows PCA and t-SNE, columns teacher and student."""
    import numpy as np
    from omegaconf import OmegaConf
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    from framework.api import load_image_data, network_from_checkpoint
    from plugins.tracking.plotting import pyplot

    ckpt = folder / "checkpoints" / "final.safetensors"
    if not ckpt.exists() or not (folder / "config.yaml").exists():
        return None
    data = load_image_data(registry, OmegaConf.load(folder / "config.yaml").data)
    if not data.test.labelled:
        return None
    images, labels = data.test.images[:max_points], data.test.labels[:max_points].numpy()
    normalize = data.normalizer("cpu")
    embeddings = {part: _embed(network_from_checkpoint(registry, ckpt, part)[0], images, normalize).numpy()
                  for part in ("teacher", "student")}
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 9))
    classes = np.unique(labels)
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    names = getattr(data, "classes", None)
    for col, (part, x) in enumerate(embeddings.items()):
        perplexity = float(min(30, max(5, (len(x) - 1) // 4)))
        projections = [("PCA", PCA(n_components=2, random_state=0).fit_transform(x)),
                       ("t-SNE", TSNE(n_components=2, init="pca", perplexity=perplexity,
                                      random_state=0).fit_transform(x))]
        for row, (method, y) in enumerate(projections):
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
    path = folder / "plots" / "embedding.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
