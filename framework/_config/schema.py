"""The run schema in Hydra's ConfigStore: the top-level dataclass, one typed node per component, the ``backbone``
group (any timm model, a node made on first lookup), plugin presets and the ``${stream_seed:NAME}`` resolver."""

from __future__ import annotations

import dataclasses
from dataclasses import field
from pathlib import Path
from typing import Any, List, Optional

from hydra.core.config_store import ConfigNode, ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

import configs
from framework._base.expectations import Expectation
from framework._base.options import EvalConfig, TrainConfig
from framework._base.registry import Registry, node_class
from framework._base.seeding import stream_seed
from framework._nets.models import adapter_for, known_backbones

SCHEMA_NAME = "rtlab_schema"
BACKBONE_GROUP = "backbone"


def config_dir() -> Path:
    """The directory of rtlab's YAML configs (works for source checkouts and installed wheels)."""
    return Path(configs.__file__).resolve().parent


def build_schema(registry: Registry) -> type:
    """The top-level config dataclass: fixed sections, one ``Any`` slot per component group, plugin settings."""
    fields: list[tuple[str, Any, Any]] = [
        ("name", str, field(default="default")),
        ("train", TrainConfig, field(default_factory=TrainConfig)),
        ("eval", EvalConfig, field(default_factory=EvalConfig)),
        (BACKBONE_GROUP, Any, field(default=MISSING)),
        ("expect", List[Expectation], field(default_factory=list)),  # rtlab verify's expected results
        # the preset of the `method` group the run uses (method=NAME sets it), so a run's config.yaml says it
        ("method", Optional[str], field(default=None)),
    ]
    for kind in registry.kinds:
        if kind.group is None:
            continue
        default = field(default_factory=dict) if kind.multi else field(default=None)
        fields.append((kind.group, Any, default))
    for section, cls in registry.settings.items():
        fields.append((section, cls, field(default_factory=cls)))
    return dataclasses.make_dataclass("RtlabConfig", fields)


def _stream_seed(stream: str, *, _root_: DictConfig) -> int:
    return stream_seed(int(_root_.train.seed), str(stream)) % 2 ** 31


def register_resolvers() -> None:
    """``${stream_seed:NAME}`` — a seed for the stream NAME derived from ``train.seed``, so one knob seeds a sweep
    (``-m train.seed=0,1,2`` with ``teacher.seed: ${stream_seed:teacher}`` gives every run its own teacher)."""
    if not OmegaConf.has_resolver("stream_seed"):
        OmegaConf.register_new_resolver("stream_seed", _stream_seed)



_active: list[Registry | None] = [None]  # the registry whose components the ConfigStore holds
_preset_groups: set[str] = set()  # config groups of plugin presets stored so far (replaced per registry)


class BackboneGroup(dict):
    """Hydra's ``backbone`` config group: one typed node per timm model, made on first lookup.

    Storing ~1,400 nodes up front costs ~0.5 s, and Hydra deep-copies its whole ConfigStore on every compose
    (another ~1 s). This group lists every timm name but builds a node only when Hydra loads it, and is shared,
    not copied (Hydra deep-copies each node it loads anyway).
    """

    def __init__(self, registry: Registry) -> None:
        super().__init__()
        self.registry = registry

    @staticmethod
    def _model(key: object) -> str | None:
        return key[:-5] if isinstance(key, str) and key.endswith(".yaml") else None

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or self._model(key) in known_backbones()

    def __getitem__(self, key: str):
        if not dict.__contains__(self, key):
            name = self._model(key)
            if name not in known_backbones():
                raise KeyError(key)
            node = OmegaConf.structured(adapter_for(self.registry, name).options(name=name))
            dict.__setitem__(self, key, ConfigNode(name=key, node=node, group=BACKBONE_GROUP, package=None,
                                                   provider="rtlab"))
        return dict.__getitem__(self, key)

    def get(self, key, default=None):  # type: ignore[override]
        return self[key] if key in self else default

    def keys(self):  # type: ignore[override]
        return [f"{n}.yaml" for n in sorted(known_backbones())]

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def __deepcopy__(self, memo: dict) -> "BackboneGroup":
        return self


def register_configs(registry: Registry) -> None:
    """Store the schema and every component's node in Hydra's ConfigStore; every timm model is a ``backbone``
    option through :class:`BackboneGroup`."""

    register_resolvers()
    if _active[0] is registry:
        return
    cs = ConfigStore.instance()
    cs.store(name=SCHEMA_NAME, node=build_schema(registry))
    for kind in registry.kinds:
        if kind.group is None:
            continue
        for comp in registry.components(kind.name):
            package = f"{kind.group}.{comp.name}" if kind.multi else None
            cs.store(group=kind.group, name=comp.name, node=node_class(comp), package=package)
    cs.repo[BACKBONE_GROUP] = BackboneGroup(registry)  # a fresh group: this registry's adapters decide
    for group in _preset_groups | set(registry.preset_groups):  # only this registry's presets are selectable
        cs.repo.pop(group, None)
    for preset in registry.presets():
        cs.store(group=preset.group, name=preset.name, node=OmegaConf.create(preset.node()), package="_global_")
    _preset_groups.update(registry.preset_groups)
    _active[0] = registry


# ----------------------------------------------------------------------------------------------- override checks
