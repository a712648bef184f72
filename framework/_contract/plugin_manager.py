"""Loads plugins: the built-in ones from one list, then the ``rtlab`` entry-point group.

Built-in plugins are registered exactly the way third-party ones are; the core never imports them directly.
Environment variables:

* ``RTLAB_DISABLE_PLUGIN_AUTOLOAD=1`` — skip the entry-point group (built-ins still load);
* ``RTLAB_BLOCK_PLUGINS=name,name`` — do not load the named plugins (built-in or third-party).
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
from dataclasses import dataclass
from typing import Any, Iterable

import pluggy

from framework import __version__
from framework._base.markers import PROJECT
from framework._contract import hookspecs
from framework._base.errors import PluginError, RtlabError
from framework._base.registry import Registry

ENTRY_POINT_GROUP = "rtlab"
DISABLE_AUTOLOAD_ENV = "RTLAB_DISABLE_PLUGIN_AUTOLOAD"
BLOCK_ENV = "RTLAB_BLOCK_PLUGINS"

# The built-in plugins, by concern (plugins/<folder>/__init__.py says what each folder holds); the order has no
# meaning: hooks never depend on it. A plugin's name is its module's short name ("knn", "dino").
DEFAULT_PLUGINS = (
    "plugins.networks.backbones",
    "plugins.networks.cifar_nets",
    "plugins.networks.heads",
    "plugins.data.datasets",
    "plugins.data.gaussian_inputs",
    "plugins.data.augmentations",
    "plugins.distill.teachers",
    "plugins.distill.students",
    "plugins.distill.updaters",
    "plugins.distill.distillation",
    "plugins.distill.losses",
    "plugins.training.optimizers",
    "plugins.training.supervised",
    "plugins.training.collapse_guard",
    "plugins.probes.knn",
    "plugins.probes.linear_probe",
    "plugins.probes.representation",
    "plugins.tracking.metrics_log",
    "plugins.tracking.tensorboard_log",
    "plugins.tracking.progress",
    "plugins.tracking.checkpointing",
    "plugins.tracking.results_table",
    "plugins.methods.random_teacher",
    "plugins.methods.dino",
    "plugins.methods.byol",
    "plugins.methods.simsiam",
    "plugins.methods.simclr",
    "plugins.methods.barlow_twins",
    "plugins.methods.vicreg",
    "plugins.analysis",
    "plugins.analysis.imp",
    "plugins.analysis.barrier",
    "plugins.analysis.landscape",
    "plugins.commands.aggregate",
    "plugins.commands.bench",
    "plugins.commands.compare",
    "plugins.commands.report",
    "plugins.commands.verify",
)


@dataclass(frozen=True)
class PluginInfo:
    name: str
    version: str
    module: str
    builtin: bool


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus the component registry the plugins fill."""

    def __init__(self) -> None:
        super().__init__(PROJECT)
        self.add_hookspecs(hookspecs)
        self.registry = Registry()
        self.infos: dict[str, PluginInfo] = {}
        self.standard = False

    def register(self, plugin: Any, name: str | None = None, *, version: str = "", builtin: bool = False
                 ) -> str | None:
        """Register ``plugin`` and ask it for its components right away (registration is historic)."""
        name = super().register(plugin, name)
        if name is None:
            return None
        module = getattr(plugin, "__name__", None) or type(plugin).__module__
        self.infos[name] = PluginInfo(name, version or _version_of(plugin), module, builtin)
        for impl in self.hook.rtlab_register.get_hookimpls():
            if impl.plugin is plugin:
                self.registry.current_plugin = name
                try:
                    impl.function(registry=self.registry)
                finally:
                    self.registry.current_plugin = "?"
        return name

    def _hookexec(self, hook_name: str, methods: Any, kwargs: Any, firstresult: bool) -> Any:
        """pluggy's call, with an unexpected exception turned into a :class:`PluginError` naming its plugin.

        :class:`RtlabError` (bad input, already explained) passes through unchanged.
        """
        try:
            return super()._hookexec(hook_name, methods, kwargs, firstresult)
        except (RtlabError, PluginError):
            raise
        except Exception as exc:
            culprit = _raising_impl(exc, methods)
            if culprit is None:
                raise
            raise PluginError(culprit.plugin_name, hook_name, exc) from exc

    def call_each(self, hook_name: str, **kwargs: Any) -> list[Exception]:
        """Call every implementation of ``hook_name`` even when some fail; returns their errors.

        For hooks after training (evaluation results, summary, run end), where one plugin's failure must not
        keep the others from saving their results.
        """
        caller = getattr(self.hook, hook_name)
        impls = caller.get_hookimpls()
        wrappers = [i for i in impls if i.wrapper or i.hookwrapper]
        errors: list[Exception] = []
        for impl in reversed([i for i in impls if not (i.wrapper or i.hookwrapper)]):
            try:
                self._hookexec(hook_name, [impl, *wrappers], kwargs, False)
            except Exception as exc:  # recorded and reported by the caller
                errors.append(exc)
        return errors

    def plugin_infos(self) -> list[PluginInfo]:
        return [self.infos[n] for n, _ in self.list_name_plugin() if n in self.infos]

    def listing(self) -> list[dict[str, Any]]:
        """Loaded plugins with the components each contributes (what ``plugins.json`` records)."""
        by_plugin = self.registry.by_plugin()
        owners = self.registry.settings_owner
        return [
            {
                "name": info.name,
                "version": info.version,
                "module": info.module,
                "builtin": info.builtin,
                "components": [{"kind": c.kind, "name": c.name} for c in by_plugin.get(info.name, [])],
                "presets": [{"group": p.group, "name": p.name} for p in self.registry.presets()
                            if p.plugin == info.name],
                "settings": sorted(s for s, owner in owners.items() if owner == info.name),
                "hooks": sorted(h.name for h in self.get_hookcallers(self.get_plugin(info.name)) or []),
            }
            for info in self.plugin_infos()
        ]


def _raising_impl(exc: BaseException, impls: Any) -> Any:
    """The hook implementation whose code raised ``exc`` (from the traceback), or None."""
    codes = {}
    for impl in impls:
        fn = getattr(impl.function, "__func__", impl.function)
        code = getattr(fn, "__code__", None)
        if code is not None:
            codes[code] = impl
    tb = exc.__traceback__
    while tb is not None:
        impl = codes.get(tb.tb_frame.f_code)
        if impl is not None:
            return impl
        tb = tb.tb_next
    return None


def _version_of(plugin: Any) -> str:
    version = getattr(plugin, "__version__", None)
    if version:
        return str(version)
    top = (getattr(plugin, "__name__", None) or type(plugin).__module__).split(".")[0]
    try:
        dists = md.packages_distributions().get(top, [])
        return md.version(dists[0]) if dists else ""
    except Exception:
        return ""


def _blocked() -> set[str]:
    return {n.strip() for n in os.environ.get(BLOCK_ENV, "").split(",") if n.strip()}


def create_plugin_manager(extra_plugins: Iterable[Any] = (), builtins: Iterable[str] = DEFAULT_PLUGINS,
                          autoload: bool | None = None) -> PluginManager:
    """A manager with the built-in plugins, the ``rtlab`` entry points (unless disabled) and ``extra_plugins``."""
    pm = PluginManager()
    blocked = _blocked()
    for modname in builtins:
        short = modname.rsplit(".", 1)[-1]
        if short in blocked or modname in blocked:
            continue
        module = importlib.import_module(modname)
        pm.register(module, name=short, version=__version__, builtin=True)
    if autoload is None:
        autoload = os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() not in ("1", "true", "yes")
    if autoload:
        for ep in md.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in blocked or ep.name in pm.infos:
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken third-party package must say who it is
                raise RtlabError(f"plugin '{ep.name}' ({ep.value}) failed to import: "
                                 f"{type(exc).__name__}: {exc}; fix it or block it with {BLOCK_ENV}={ep.name}"
                                 ) from exc
            version = ep.dist.version if ep.dist is not None else ""
            pm.register(plugin, name=ep.name, version=version)
    for plugin in extra_plugins:
        pm.register(plugin)
    return pm


_default: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide manager (created on first use)."""
    global _default
    if _default is None:
        _default = create_plugin_manager()
        _default.standard = True  # built-ins and entry points only: what framework.cli.listing_cache may store
    return _default


def set_plugin_manager(pm: PluginManager | None) -> None:
    """Replace the process-wide manager (tests use this to add plugins)."""
    global _default
    _default = pm
