"""Hydra configuration: the run schema, component nodes in the ConfigStore, composition and override checks.

Config groups mirror component kinds (``teacher=random``, ``loss=ce``, ``evaluator=[knn,linear]``). Every
component's options dataclass is stored as a typed node, so struct mode catches typos for third-party
components too. ``backbone=NAME`` accepts any timm model name: each gets a node of its family adapter's options.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import field
from pathlib import Path
from typing import Any, List, Sequence

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigNode, ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    OmegaConfBaseException,
)

import configs
from framework._base.errors import RtlabError, close_matches, unknown_name
from framework._base.expectations import Expectation
from framework._base.options import EvalConfig, TrainConfig
from framework._base.registry import Registry, node_class
from framework._base.seeding import stream_seed
from framework._contract.plugin_manager import get_plugin_manager
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
_HYDRA_FLAGS = re.compile(r"^(hydra/|hydra\.|\+hydra|~hydra)")


def check_overrides(overrides: Sequence[str], registry: Registry) -> None:
    """Fail early, with close matches, on a component or backbone name no plugin provides."""

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        raise RtlabError(f"cannot parse overrides: {_one_line(str(exc))}") from None
    groups = {k.group: k for k in registry.kinds if k.group}
    preset_groups = set(registry.preset_groups)
    for ov in parsed:
        key = ov.key_or_group.lstrip("+")
        if ov.is_delete() or (key not in groups and key != BACKBONE_GROUP and key not in preset_groups) or \
                ov.package is not None:
            continue
        try:
            values = list(ov.sweep_string_iterator()) if ov.is_sweep_override() else [ov.value()]
        except Exception:  # glob sweeps and the like are expanded by Hydra itself
            continue
        for value in values:
            names = value if isinstance(value, list) else [value]
            for name in names:
                if not isinstance(name, str):
                    continue
                if key in preset_groups:
                    if name not in group_presets(key):
                        registry.preset(key, name)
                elif key == BACKBONE_GROUP:
                    known = known_backbones()
                    if name not in known:
                        raise unknown_name("backbone", name, known, "(list them with: rtlab backbones PATTERN)")
                elif name not in group_presets(key) and name not in registry.names(groups[key].name):
                    presets = group_presets(key)
                    if not presets:
                        registry.get(groups[key].name, name)
                    raise unknown_name(f"{key} option", name, registry.names(groups[key].name) + presets,
                                       f"(select with {key}=NAME)")


def group_presets(group: str) -> list[str]:
    """Names of the YAML presets shipped in ``configs/<group>/`` (e.g. the data presets cifar10, stl10, …)."""
    folder = config_dir() / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    keep = [ln for ln in lines if not ln.startswith(("full_key", "object_type", "reference_type", "Set the env"))]
    return " ".join(keep or lines)


def _explain(exc: BaseException, overrides: Sequence[str], registry: Registry, config_dirs: Sequence[str]) -> str:
    """One line for a composition error: the bad key with close matches, or the value and what it should be."""

    cause = exc.__cause__ or exc.__context__
    full_key = getattr(cause, "full_key", None)
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and full_key:
        parent, _, key = str(full_key).rpartition(".")
        known: list[str] = []
        try:  # the keys that do exist there, from the config without the offending override
            rest = [o for o in overrides if not o.lstrip("+~").startswith(str(full_key))]
            cfg = _compose_raw(rest, config_dirs)
            node = OmegaConf.select(cfg, parent) if parent else cfg
            known = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
        except Exception:
            pass

        close = close_matches(key, known)
        hint = f"; did you mean {', '.join(f'{parent}.{c}' if parent else c for c in close)}?" if close else ""
        where = f" (keys of {parent}: {', '.join(known)})" if known and len(known) <= 25 else ""
        return f"unknown config key '{full_key}'{hint}{where}"
    if cause is not None and full_key:
        return f"invalid value for {full_key}: {_one_line(str(cause))}"
    return f"invalid configuration: {_one_line(str(exc))}"


def _compose_raw(overrides: Sequence[str], config_dirs: Sequence[str] = (), hydra_config: bool = False
                 ) -> DictConfig:
    extra = [f"hydra.searchpath=[{','.join('file://' + str(Path(d).resolve()) for d in config_dirs)}]"
             ] if config_dirs else []
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        return hydra_compose(config_name="config", overrides=[*extra, *overrides], return_hydra_config=hydra_config)


def compose(overrides: Sequence[str] = (), registry: Registry | None = None, config_dirs: Sequence[str] = (),
            hydra_config: bool = False) -> DictConfig:
    """Compose the run config like ``rtlab train`` would, without running anything (tests, tools).

    ``config_dirs`` are extra config folders searched before the built-in ones (``rtlab train -cd DIR``);
    ``hydra_config`` keeps Hydra's own ``hydra`` node (run-folder patterns, …) in the result.
    """

    if registry is None:
        registry = get_plugin_manager().registry
    register_configs(registry)
    check_overrides(overrides, registry)
    try:
        return _compose_raw(overrides, config_dirs, hydra_config)
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise RtlabError(_explain(exc, overrides, registry, config_dirs)) from None


def check_config(cfg: DictConfig, registry: Registry) -> None:
    """Every selected component exists and every value is of its declared type."""
    groups = {k.group: k for k in registry.kinds if k.group}
    for group, kind in groups.items():
        node = cfg.get(group)
        if node is None:
            continue
        if kind.multi:
            for name in node:
                registry.get(kind.name, name)
        elif isinstance(node, DictConfig) and "name" in node:
            registry.get(kind.name, node.name)
    try:
        OmegaConf.resolve(cfg)
    except Exception as exc:
        raise RtlabError(f"invalid configuration: {_one_line(str(exc))}") from None
    check_ranges(cfg)


# (setting, valid?, what it must be) — checked before anything is built
RANGES = (
    ("train.epochs", lambda v: v >= 0, "a number of epochs >= 0"),
    ("train.batch_size", lambda v: v > 0, "a positive batch size"),
    ("train.log_every", lambda v: v > 0, "a positive number of steps"),
    ("train.max_steps", lambda v: v is None or v >= 0, "null or a number of steps >= 0"),
    ("train.threads", lambda v: v is None or v > 0, "null or a positive number of threads"),
    ("train.state_every", lambda v: v >= 0, "a number of epochs >= 0 (0 = off)"),
    ("train.state_steps", lambda v: v >= 0, "a number of steps >= 0 (0 = off)"),
    ("eval.every", lambda v: v >= 0, "a number of epochs >= 0 (0 = only before and after training)"),
    ("eval.batch_size", lambda v: v > 0, "a positive batch size"),
    ("data.train_size", lambda v: v is None or v > 0, "null (all) or a positive number of images"),
    ("data.test_size", lambda v: v is None or v > 0, "null (all) or a positive number of images"),
    ("data.image_size", lambda v: v is None or v > 0, "null (keep) or a positive size in pixels"),
    ("data.test_fraction", lambda v: 0.0 < v < 1.0, "a fraction between 0 and 1 (exclusive)"),
    ("data.channels", lambda v: v in (None, 1, 3), "null (keep), 1 or 3"),
)


def check_ranges(cfg: DictConfig) -> None:
    """Settings whose type is right but whose value cannot work, with what they must be."""
    absent = object()
    for key, valid, what in RANGES:
        value = OmegaConf.select(cfg, key, default=absent)
        if value is absent:
            continue
        try:
            ok = valid(value)
        except TypeError:
            ok = False
        if not ok:
            raise RtlabError(f"{key} must be {what}, got {value}")


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


# ------------------------------------------------------------------------------------------------ data presets
DATA_GROUP = "data"


def _preset_values(registry: Registry, preset: str) -> tuple[str, Any]:
    """(dataset source name, option values) of a data preset or of a dataset source used by name."""
    path = config_dir() / DATA_GROUP / f"{preset}.yaml"
    if path.exists():
        values = OmegaConf.load(path)
        defaults = [d for d in values.pop("defaults", []) if d != "_self_"]
        if len(defaults) != 1 or not isinstance(defaults[0], str):
            raise RtlabError(f"data preset {path} must name exactly one dataset source in its defaults list")
        return defaults[0], values
    if preset in registry.names("dataset"):
        return preset, OmegaConf.create({})
    raise unknown_name("dataset preset or source", preset, group_presets(DATA_GROUP) + registry.names("dataset"))


def dataset_node(registry: Registry, spec: Any) -> tuple[str, DictConfig]:
    """The typed ``data`` node for one ``eval.datasets`` entry and the key its metrics carry.

    An entry is a preset or source name (``cifar100``) or a mapping: ``{preset: NAME, key: KEY, <option>: value}``
    or ``{name: SOURCE, key: KEY, <option>: value}``; the key defaults to the preset or source name.
    """
    if isinstance(spec, str):
        preset, key, overrides = spec, None, {}
    else:
        if not isinstance(spec, (dict, DictConfig)):
            raise RtlabError(f"an eval.datasets entry must be a name or a mapping, got {spec!r}")
        overrides = dict(OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else spec)
        preset, key = overrides.pop("preset", None), overrides.pop("key", None)
        if preset is None and "name" not in overrides:
            raise RtlabError(f"the eval.datasets entry {overrides} names no dataset; give preset: NAME or name: "
                             "SOURCE")
    if preset is not None:
        source, values = _preset_values(registry, preset)
    else:
        source, values = overrides.pop("name"), OmegaConf.create({})
    comp = registry.get("dataset", source)
    try:
        node = OmegaConf.merge(OmegaConf.structured(node_class(comp)), values, overrides)
    except Exception as exc:
        raise RtlabError(f"invalid eval.datasets entry {spec!r}: {_one_line(str(exc))}") from None
    return str(key or preset or source), node


def with_values(cfg: DictConfig, overrides: Sequence[str], registry: Registry) -> DictConfig:
    """A copy of a composed ``cfg`` (e.g. a finished run's ``config.yaml``) with ``key=value`` overrides applied.
    Selecting other components (``loss=…``, ``backbone=…``, a preset) needs a composition from scratch and is
    refused with the way to do it."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        raise RtlabError(f"cannot parse overrides: {_one_line(str(exc))}") from None
    groups = {k.group for k in registry.kinds if k.group} | {BACKBONE_GROUP, "experiment"} | set(registry.preset_groups)
    out = cfg.copy()
    for ov in parsed:
        key = ov.key_or_group
        if key in groups or ov.is_delete() or ov.is_sweep_override():
            raise RtlabError(f"'{ov.input_line}' selects a component or a preset; on a finished run's configuration "
                             "only values can change (key=value): set the component's options instead, or train "
                             "the setting you want first")
        try:
            OmegaConf.update(out, key, ov.value(), merge=True, force_add=ov.is_add())
        except Exception as exc:
            raise RtlabError(f"invalid value for {key}: {_one_line(str(exc))}") from None
    return out
