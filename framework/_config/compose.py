"""Composing a configuration like ``rtlab train`` does, and the checks made before anything is built: override
names, component names, value ranges, and every selected component built once (its own checks).

Config groups mirror component kinds (``teacher=random``, ``loss=ce``, ``evaluator=[knn,linear]``). Every
component's options dataclass is stored as a typed node (:mod:`framework._config.schema`), so struct mode catches
typos for third-party components too. ``backbone=NAME`` accepts any timm model name.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any, Sequence

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    OmegaConfBaseException,
)

from framework._base.errors import PluginError, RtlabError, close_matches, unknown_name
from framework._config.limits import check_batch_memory, check_environment, check_finite
from framework._base.registry import Registry, node_class
from framework._config.schema import BACKBONE_GROUP, config_dir, register_configs
from framework._contract.plugin_manager import get_plugin_manager
from framework._nets.models import known_backbones

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
        if not close and getattr(cause, "object_type", None) is dict:  # a free-form dict such as backbone.kwargs
            hint = f"; {parent or 'the config'} takes new keys only with '+': '+{full_key}=VALUE', one key each"
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
    init = OmegaConf.select(cfg, "backbone.init", default=None)
    if isinstance(init, str) and registry.names("init"):
        registry.get("init", init)
    try:
        OmegaConf.resolve(cfg)
    except Exception as exc:
        raise RtlabError(f"invalid configuration: {_one_line(str(exc))}") from None
    check_ranges(cfg)
    check_components(cfg, registry)


def check_components(cfg: DictConfig, registry: Registry) -> None:
    """Build every selected component once, so that an option value a component refuses (its factory or its
    options' ``__post_init__`` raises :class:`RtlabError`) stops the command here, before any run folder exists.
    Factories are cheap and free of side effects by contract (heavy work belongs in ``build``/``setup``); one that
    needs more than its options (a head's ``in_dim``) is built when the run is."""
    selected: list[tuple[str, Any]] = []
    for kind in registry.kinds:
        node = cfg.get(kind.group) if kind.group else None
        if node is None:
            continue
        nodes = list(node.values()) if kind.multi else [node]
        selected += [(kind.name, n) for n in nodes if isinstance(n, DictConfig) and "name" in n]
    init = OmegaConf.select(cfg, "backbone.init", default=None)
    if isinstance(init, str) and registry.names("init"):
        selected.append(("init", {"name": init}))
    for kind, node in selected:
        comp = registry.get(kind, node["name"])
        if _needs_more_than_options(comp.factory):
            continue
        try:
            registry.build(kind, node)
        except (RtlabError, PluginError):
            raise
        except Exception as exc:  # a bug in the plugin: say whose
            raise PluginError(comp.plugin, f"the {kind} factory '{comp.name}'", exc) from exc


def _needs_more_than_options(factory: Any) -> bool:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    required = [p for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return len(required) > 1


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
    check_environment()
    check_finite(OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True))
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
    check_batch_memory(cfg)


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
