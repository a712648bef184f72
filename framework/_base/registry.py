"""The component registry: every name a config can select, who contributed it, and its options dataclass."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from omegaconf import DictConfig, OmegaConf

from framework._base.errors import RtlabError, unknown_name
from framework._base.options import AnalysisOptions, BackboneOptions, DataOptions


@dataclass(frozen=True)
class Kind:
    """A kind of component. ``group`` is its Hydra config group; ``multi`` kinds select a list (evaluators)."""

    name: str
    doc: str
    group: str | None = None
    options_base: type | None = None
    multi: bool = False
    # how a user selects one, for messages; default "(select with GROUP=NAME)"
    select_hint: str | None = None

    @property
    def hint(self) -> str:
        if self.select_hint is not None:
            return self.select_hint
        return f"(select with {self.group}=NAME)" if self.group else ""


@dataclass(frozen=True)
class Component:
    """One named component: ``factory(options)`` builds it; ``options`` is the dataclass of its settings."""

    kind: str
    name: str
    factory: Any
    options: type
    plugin: str
    doc: str = ""


@dataclass(frozen=True)
class Preset:
    """A configuration a plugin contributes to a config group whose options are presets, not components (e.g.
    ``method=byol``): the components it selects (``choices``: group → component name) and the values it sets
    (``values``: a nested mapping, e.g. ``{"updater": {"bn_mode": "from_data"}}``). It is stored at the global
    package, so it can set any section; later overrides (an ``experiment`` preset, the command line) win."""

    group: str
    name: str
    choices: dict
    values: dict
    plugin: str
    doc: str = ""

    def node(self) -> dict:
        """The Hydra config: a defaults list overriding the chosen groups, then the values."""
        defaults: list[Any] = [{f"override /{group}": name} for group, name in self.choices.items()]
        return {"defaults": [*defaults, "_self_"], **self.values}


@dataclass
class NoOptions:
    """A component without settings."""


# The kinds the core loop calls. Plugins may add more with Registry.add_kind.
CORE_KINDS = (
    Kind("backbone_adapter", "adapts a family of timm models to small inputs and an init scheme; chosen "
         "automatically from the backbone name", None, BackboneOptions),
    Kind("init", "an initialisation scheme of backbones (paper, timm, or a plugin's); chosen with backbone.init=NAME",
         None, select_hint="(choose with backbone.init=NAME)"),
    Kind("dataset", "a source of image datasets (hub id, local folder, built-in data)", "data", DataOptions),
    Kind("head", "the projection head on top of the encoder (student and teacher)", "head"),
    Kind("teacher", "builds the teacher network (random init, a checkpoint, …)", "teacher"),
    Kind("student", "initialises the student from the teacher (copy, interpolation, independent, …)", "student"),
    Kind("updater", "updates the teacher after each step (frozen, EMA, …)", "updater"),
    Kind("objective", "turns a batch of views into a loss, running student and teacher as it needs", "objective"),
    Kind("loss", "a distance between student and teacher outputs, used by distillation objectives", "loss"),
    Kind("augment", "turns a batch of images into views, batched on the training device", "augment"),
    Kind("optimizer", "builds the optimiser and its learning-rate schedule", "optimizer"),
    Kind("evaluator", "measures representations (k-NN, linear probe, …); several can be selected", "evaluator",
         multi=True),
    Kind("analysis", "an analysis run by `rtlab analyze NAME [RUN …]` (IMP, barrier, landscape, …)", "analysis",
         AnalysisOptions, select_hint="(run one with: rtlab analyze NAME)"),
)


class Registry:
    """Named components by kind. Filled by the ``rtlab_register`` hook of every plugin."""

    def __init__(self) -> None:
        self._kinds: dict[str, Kind] = {}
        self._components: dict[str, dict[str, Component]] = {}
        self.current_plugin = "?"
        self.settings: dict[str, type] = {}
        self.settings_owner: dict[str, str] = {}
        self._presets: dict[str, dict[str, Preset]] = {}
        for kind in CORE_KINDS:
            self.add_kind(kind.name, kind.doc, group=kind.group, options_base=kind.options_base, multi=kind.multi,
                          select_hint=kind.select_hint)

    # ----------------------------------------------------------------------------------------------------- kinds
    def add_kind(self, name: str, doc: str, group: str | None = None, options_base: type | None = None,
                 multi: bool = False, select_hint: str | None = None) -> Kind:
        """Declare a kind of component (idempotent for identical declarations); ``select_hint`` says how a user
        selects one, for messages (default ``(select with GROUP=NAME)``)."""
        kind = Kind(name, doc, group, options_base, multi, select_hint)
        old = self._kinds.get(name)
        if old is not None and (old.group, old.multi) != (group, multi):
            raise RtlabError(f"kind '{name}' is declared twice with different settings "
                             f"(by {self.current_plugin})")
        if old is None or options_base is not None:
            self._kinds[name] = kind if old is None else dataclasses.replace(old, options_base=options_base)
        self._components.setdefault(name, {})
        return self._kinds[name]

    def kind(self, name: str) -> Kind:
        if name not in self._kinds:
            raise unknown_name("component kind", name, self._kinds)
        return self._kinds[name]

    @property
    def kinds(self) -> list[Kind]:
        return list(self._kinds.values())

    def add_settings(self, section: str, options: type) -> None:
        """Contribute a top-level config section (``section.key=value``) for a plugin's own settings."""
        if not dataclasses.is_dataclass(options):
            raise TypeError(f"settings '{section}' must be a dataclass")
        reserved = {"name", "train", "eval", "backbone"} | {k.group for k in self._kinds.values() if k.group}
        if section in reserved or section in self.settings:
            owner = self.settings_owner.get(section, "rtlab")
            raise RtlabError(f"config section '{section}' is already taken (by {owner}); "
                             f"{self.current_plugin} must choose another name")
        self.settings[section] = options
        self.settings_owner[section] = self.current_plugin

    # --------------------------------------------------------------------------------------------------- presets
    def add_preset(self, group: str, name: str, choices: dict | None = None, values: dict | None = None,
                   doc: str = "") -> Preset:
        """Contribute preset ``name`` of config group ``group`` (see :class:`Preset`): ``group=name`` then selects
        the components in ``choices`` and sets ``values``. The group must not be a component kind's group."""
        if group in {k.group for k in self._kinds.values() if k.group} | {"name", "train", "eval", "backbone"}:
            raise RtlabError(f"preset group '{group}' is a component group; {self.current_plugin} must register "
                             "a component there, or use another group name")
        presets = self._presets.setdefault(group, {})
        if name in presets:
            raise RtlabError(f"{group} '{name}' is contributed twice: by {presets[name].plugin} and by "
                             f"{self.current_plugin}; rename one or block a plugin with RTLAB_BLOCK_PLUGINS")
        preset = Preset(group, name, dict(choices or {}), dict(values or {}), self.current_plugin, doc)
        presets[name] = preset
        return preset

    def presets(self, group: str | None = None) -> list[Preset]:
        """The presets of ``group`` (every group when None), sorted by name."""
        groups = [group] if group is not None else sorted(self._presets)
        return [p for g in groups for _, p in sorted(self._presets.get(g, {}).items())]

    def preset(self, group: str, name: str) -> Preset:
        """The preset, or an :class:`RtlabError` listing the known names and close matches."""
        presets = self._presets.get(group, {})
        if name not in presets:
            raise unknown_name(f"{group} preset", name, presets, f"(select with {group}=NAME)")
        return presets[name]

    @property
    def preset_groups(self) -> list[str]:
        return sorted(self._presets)

    # ------------------------------------------------------------------------------------------------ components
    def add(self, kind: str, name: str, factory: Any, options: type | None = None, doc: str | None = None
            ) -> Component:
        """Register ``factory`` as component ``name`` of ``kind``; ``options`` is its settings dataclass."""
        k = self.kind(kind)
        options = options or NoOptions
        if not dataclasses.is_dataclass(options):
            raise TypeError(f"options of {kind} '{name}' must be a dataclass, got {options!r}")
        if k.options_base is not None and not issubclass(options, k.options_base):
            raise TypeError(f"options of {kind} '{name}' must subclass {k.options_base.__name__}")
        if name in self._components[kind]:
            prev = self._components[kind][name]
            raise RtlabError(f"{kind} '{name}' is contributed twice: by {prev.plugin} and by "
                             f"{self.current_plugin}; rename one or block a plugin with RTLAB_BLOCK_PLUGINS")
        if doc is None:
            doc = (getattr(factory, "__doc__", None) or "").strip().split("\n")[0]
        comp = Component(kind, name, factory, options, self.current_plugin, doc)
        self._components[kind][name] = comp
        return comp

    def get(self, kind: str, name: str) -> Component:
        """The component, or an :class:`RtlabError` listing the known names and close matches."""
        comps = self._components[self.kind(kind).name]
        if name not in comps:
            raise unknown_name(kind.replace("_", " "), name, comps, self._kinds[kind].hint)
        return comps[name]

    def has_kind(self, kind: str) -> bool:
        return kind in self._kinds

    def has(self, kind: str, name: str) -> bool:
        return name in self._components.get(kind, {})

    def names(self, kind: str) -> list[str]:
        return sorted(self._components[self.kind(kind).name])

    def components(self, kind: str | None = None) -> Iterator[Component]:
        kinds = [kind] if kind else list(self._kinds)
        for k in kinds:
            yield from self._components[k].values()

    def by_plugin(self) -> dict[str, list[Component]]:
        out: dict[str, list[Component]] = {}
        for comp in self.components():
            out.setdefault(comp.plugin, []).append(comp)
        return out

    def options(self, kind: str, node: Any) -> Any:
        """The options dataclass instance for a config node, a dataclass, or a plain mapping with a ``name``
        (e.g. settings read back from a checkpoint's JSON)."""
        opts = to_options(node)
        if not isinstance(opts, dict):
            return opts
        name = opts.get("name")
        if name is None:
            raise RtlabError(f"the {kind} settings name no component (missing 'name')")
        cls = node_class(self.get(kind, name))
        try:
            return cls(**opts)
        except TypeError as exc:
            raise RtlabError(f"{kind} '{name}' settings do not fit this version of its component ({exc})") from None

    def build(self, kind: str, options: Any, **kwargs: Any) -> Any:
        """Build the component a config node selects: ``options`` is the node (with its ``name``), its options
        dataclass, or a mapping."""
        opts = self.options(kind, options)
        comp = self.get(kind, opts.name)
        return comp.factory(opts, **kwargs)


def to_options(node: Any) -> Any:
    """A Hydra/OmegaConf node as the dataclass instance it was made from (dataclasses pass through); an untyped
    node or mapping becomes a plain dict."""
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        return node

    if isinstance(node, DictConfig):
        return OmegaConf.to_object(node)
    if isinstance(node, dict):
        return dict(node)
    raise TypeError(f"expected a config node or options dataclass, got {type(node).__name__}")


def node_class(comp: Component) -> type:
    """The options dataclass extended with a ``name`` field set to the component's name (its config node)."""
    if "name" in {f.name for f in dataclasses.fields(comp.options)}:
        return comp.options  # e.g. backbone options, whose name is the timm model's
    return dataclasses.make_dataclass(
        comp.options.__name__, [("name", str, field(default=comp.name))], bases=(comp.options,))


def describe_options(options: type) -> list[tuple[str, str, Any]]:
    """(name, type, default) of every option of a dataclass, for listings and docs."""
    out = []
    for f in dataclasses.fields(options):
        if f.name == "name":
            continue
        default: Any
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "???"
        tname = getattr(f.type, "__name__", str(f.type))
        out.append((f.name, tname, default))
    return out


def option_help(options: type) -> dict[str, str]:
    """Each option's help: ``field(metadata={"help": …})``, else the comment on its line (or the comment lines just
    above it) in the dataclass's source, searched along the class hierarchy."""

    found: dict[str, str] = {}
    for cls in reversed([c for c in options.__mro__ if dataclasses.is_dataclass(c)]):
        try:
            lines, _ = inspect.getsourcelines(cls)
        except (OSError, TypeError):
            continue
        for node in ast.parse(textwrap.dedent("".join(lines))).body[0].body:
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            line = lines[node.lineno - 1]
            comment = [line.split("#", 1)[1].strip()] if "#" in line else []
            above = node.lineno - 2
            while not comment and above >= 0 and lines[above].strip().startswith("#"):
                block = []
                while above >= 0 and lines[above].strip().startswith("#"):
                    block.insert(0, lines[above].strip().lstrip("#").strip())
                    above -= 1
                comment = block
            if comment:
                found[node.target.id] = " ".join(comment)
    for f in dataclasses.fields(options):
        if f.metadata.get("help"):
            found[f.name] = str(f.metadata["help"])
    return found


Factory = Callable[..., Any]
