"""A run folder opened for study: its resolved configuration, results, data splits and networks.

``load_run(folder)`` is how an analysis, a notebook or a script reads what a run left, without training anything::

    run = load_run("runs/default/2026-12-07_10-00-00")
    run.cfg.backbone.name, run.metrics["knn/student"]
    student = run.network("student")                    # checkpoints/final; "epoch_5", "last", … also work
    z = run.embed("student", split="test", layers=[-1, -2])

The data are the splits the run trained and was probed on (the same selection, so the data cache is reused and
nothing is decoded twice); networks are rebuilt from the architecture their checkpoint records (stems and patch sizes
as the run resolved them) and returned in eval mode on the chosen device.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from omegaconf import DictConfig, OmegaConf

from framework._base import paths
from framework._base.errors import RtlabError
from framework._base.keys import EMBEDDING, Layer
from framework._base.provenance import check_recorded_plugins
from framework._base.registry import Registry
from framework._contract.features import embed
from framework._contract.plugin_manager import get_plugin_manager
from framework._data.data import ImageData, load_image_data
from framework._nets.checkpoint import checkpoint_paths
from framework._nets.device import resolve_device
from framework._nets.models import Network, network_from_checkpoint
from framework._nets.placement import Placement

PARTS = ("student", "teacher")


class LoadedRun:
    """A finished (or unfinished) run folder; see the module doc. Everything is read when first asked for."""

    def __init__(self, folder: Union[str, Path], registry: Optional[Registry] = None, device: str = "auto") -> None:
        self.folder = Path(folder).expanduser()
        if not paths.config(self.folder).is_file():
            raise RtlabError(f"{self.folder} is not a run folder (no {paths.CONFIG}); name a folder that "
                             "`rtlab train` wrote, e.g. runs/default/TIME")
        self.registry = registry if registry is not None else get_plugin_manager().registry
        self.device = resolve_device(device)
        self.cfg: DictConfig = OmegaConf.load(paths.config(self.folder))
        check_recorded_plugins(self.folder, self.registry, OmegaConf.to_container(self.cfg))

    def __repr__(self) -> str:
        return f"LoadedRun({str(self.folder)!r})"

    # --------------------------------------------------------------------------------------------- results
    @functools.cached_property
    def summary(self) -> Optional[dict[str, Any]]:
        """``summary.json``, or None while the run has not finished."""
        path = paths.summary(self.folder)
        return json.loads(path.read_text()) if path.exists() else None

    @property
    def finished(self) -> bool:
        return self.summary is not None

    def history(self) -> list[dict[str, Any]]:
        """Every evaluation the run logged (``metrics.jsonl`` rows of kind ``eval``), in order."""
        path, rows = paths.metrics(self.folder), []
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a torn last line of a killed run
                    continue
                if row.get("kind") == "eval":
                    rows.append(row)
        return rows

    @property
    def metrics(self) -> dict[str, float]:
        """The final results (``summary.json``), or, for an unfinished run, every result logged so far."""
        if self.summary is not None:
            return dict(self.summary.get("metrics", {}))
        out: dict[str, float] = {}
        for row in self.history():
            out.update({k: v for k, v in row.items() if k not in ("kind", "epoch", "step")})
        return out

    # ------------------------------------------------------------------------------------------------- data
    @functools.cached_property
    def data(self) -> ImageData:
        """The run's train and test splits (uint8 images, labels, normalisation), as it saw them."""
        return load_image_data(self.registry, self.cfg.data, self.device)

    @property
    def placement(self) -> Placement:
        """fp32 on the run's device, normalised as the run normalised its inputs."""
        return Placement(self.device, normalize=self.data.normalizer(self.device))

    # --------------------------------------------------------------------------------------------- networks
    def checkpoints(self) -> list[str]:
        """The checkpoint names the run holds (``final``, ``epoch_N``, ``last`` = the training state, …)."""
        folder = self.folder / paths.CHECKPOINTS
        return sorted(p.stem for p in folder.glob("*.json") if not p.name.startswith(".")) if folder.is_dir() else []

    def network(self, part: str = "student", checkpoint: str = paths.FINAL) -> Network:
        """The ``student`` or ``teacher`` network at ``checkpoint``, in eval mode on the run's device."""
        if part not in PARTS:
            raise RtlabError(f"a run holds the networks {' and '.join(PARTS)}, not '{part}'")
        base = paths.checkpoint(self.folder, checkpoint)
        if not checkpoint_paths(base)[1].exists():
            known = ", ".join(self.checkpoints()) or "none"
            raise RtlabError(f"{self.folder} has no checkpoint '{checkpoint}' (it has: {known}); checkpoints/final is "
                             "written when a run finishes with checkpoint.final=true")
        net, _ = network_from_checkpoint(self.registry, base, part)
        return net.to(self.device).eval()

    def embed(self, part: str = "student", split: str = "test", layers: Union[Layer, Sequence[Layer]] = EMBEDDING,
              checkpoint: str = paths.FINAL, batch_size: int = 256
              ) -> Union[torch.Tensor, dict[Layer, torch.Tensor]]:
        """Embeddings of a split (``train`` or ``test``) by a network of the run, as the run's probes saw them
        (:func:`framework.api.embed`)."""
        if split not in ("train", "test"):
            raise RtlabError(f"split must be train or test, got '{split}'")
        images = getattr(self.data, split).images
        return embed(self.network(part, checkpoint), images, layers, placement=self.placement, batch_size=batch_size)


def load_run(folder: Union[str, Path], registry: Optional[Registry] = None, device: str = "auto") -> LoadedRun:
    """Open the run in ``folder`` for study (see the module doc); ``registry`` defaults to the loaded plugins'."""
    return LoadedRun(folder, registry, device)
