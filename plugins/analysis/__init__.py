"""The ``rtlab analyze NAME [RUN …] [OVERRIDES]`` command, and the built-in analyses.

An analysis is a component of the core kind ``analysis`` (config group ``analysis``): its options dataclass
subclasses :class:`framework.api.AnalysisOptions` and becomes the ``analysis`` section of the configuration, so an
analysis takes Hydra overrides exactly like ``rtlab train`` (``rtlab analyze imp experiment=paper_fig8_imp_cpu
analysis.rounds=3 optimizer.lr=0.05``). ``factory(options)`` returns an object with

* ``run(ctx: framework.api.AnalysisContext) -> dict`` — do the work in ``ctx.out_dir`` and return JSON-able results;
  every training run goes through ``ctx.train`` so finished runs are skipped when the analysis is started again;
* ``render(out_dir: Path, results: dict) -> str`` — draw the plots (``out_dir/plots``) and return a Markdown
  summary; ``rtlab report`` calls it again later.

Run folders named on the command line are the runs the analysis studies (``ctx.runs``, ``ctx.open_run()``): the
configuration is then the first run's, and the output goes to ``RUN/analyses/<analysis>-<hash>``; without runs the
configuration is composed like ``rtlab train``'s (the rest of it configures the runs the analysis trains) and the
output goes to ``runs/<name>/<analysis>-<hash>``. ``--out DIR`` chooses another folder; running the same command
again resumes where it stopped.

This package is the plugin ``analysis`` (the command). Its modules:

* plugins — ``imp`` (lottery tickets, Fig. 8), ``barrier`` (linear mode connectivity, Fig. 9), ``landscape``
  (loss and probe planes, Fig. 5);
* helpers (not plugins) — ``sources`` (network specifications analyses start from), ``pruning`` (masks as
  buffers, global magnitude pruning), ``interpolation`` (points on lines and planes of parameter space).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import shutil

from pathlib import Path
from typing import Any, Protocol, Sequence

from omegaconf import DictConfig, OmegaConf

from framework.api import (AnalysisContext, AnalysisOptions, atomic_write_text, check_config, check_recorded_plugins,
                           compose, hookimpl, load_run, LOCK_NAME, paths, RtlabError, RunLock, with_values)

log = logging.getLogger("rtlab")

KIND = "analysis"
RESULTS_FILE = "analysis.json"
# Settings that change how a run is shown, never what it computes: left out of the folder hash.
PRESENTATION_SECTIONS = ("progress", "tensorboard")


class Analysis(Protocol):
    def run(self, ctx: AnalysisContext) -> dict:
        """Do the work in ``ctx.out_dir``; return JSON-able results (written to ``analysis.json``)."""

    def render(self, out_dir: Path, results: dict) -> str:
        """Plots into ``out_dir/plots`` and a Markdown summary of ``results``."""


def declare_kind(registry) -> None:
    """The ``analysis`` kind is one of the core's kinds now; kept so plugins written for older versions load."""
    registry.add_kind(KIND, registry.kind(KIND).doc, group=KIND, options_base=AnalysisOptions,
                      select_hint="(run one with: rtlab analyze NAME)")


def config_hash(cfg: DictConfig) -> str:
    """A short hash of everything in ``cfg`` that affects results."""
    data = OmegaConf.to_container(cfg, resolve=True)
    for section in PRESENTATION_SECTIONS:
        data.pop(section, None)  # type: ignore[union-attr]
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:10]


def compose_analysis(name: str, overrides: Sequence[str], registry, runs: Sequence[Path] = ()
                     ) -> tuple[DictConfig, list[str]]:
    """The configuration of ``rtlab analyze NAME [RUN …] OVERRIDES`` and the override list that composes it.

    Without runs it is composed like ``rtlab train``'s; with runs it is the first run's ``config.yaml`` with the
    analysis's options and the ``key=value`` overrides on top, and it records the runs under ``analysed``."""
    registry.get(KIND, name)
    overrides = list(overrides)
    if any(o.split("=", 1)[0].lstrip("+~") == KIND for o in overrides):
        raise RtlabError(f"the analysis is chosen by the command (rtlab analyze {name}); drop the analysis= "
                         "override")
    if runs:
        own = [o for o in overrides if o.lstrip("+~").startswith(f"{KIND}.")]
        node = compose([f"+{KIND}={name}", *own], registry)[KIND]
        cfg = with_values(load_run(runs[0], registry, device="cpu").cfg, [o for o in overrides if o not in own],
                          registry)
        cfg[KIND] = node
        cfg["analysed"] = [str(Path(r).resolve()) for r in runs]
        check_config(cfg, registry)
        return cfg, [f"+{KIND}={name}", *own]
    # a preset may already select an analysis; see which one (without the analysis's own settings)
    chosen = compose([o for o in overrides if not o.lstrip("+~").startswith(f"{KIND}.")], registry).get(KIND)
    if chosen is not None and chosen.get("name") != name:
        raise RtlabError(f"this configuration is for analysis '{chosen.get('name')}', not '{name}'; run rtlab "
                         f"analyze {chosen.get('name')} or choose another experiment")
    full = overrides if chosen is not None else [f"+{KIND}={name}", *overrides]
    cfg = compose(full, registry)
    check_config(cfg, registry)
    return cfg, full


def split_arguments(args: Sequence[str]) -> tuple[list[Path], list[str]]:
    """(run folders, Hydra overrides) of ``rtlab analyze NAME ARGS``: a folder holding ``config.yaml`` is a run to
    study, an argument with ``=`` an override; anything else is refused with what it should be."""
    runs, overrides = [], []
    for arg in args:
        path = Path(arg).expanduser()
        try:
            folder = path.is_dir()
        except OSError:  # an override longer than a file name can be
            folder = False
        if folder and paths.config(path).is_file():
            runs.append(path)
        elif "=" in arg:
            overrides.append(arg)
        elif folder:
            raise RtlabError(f"{arg} is a folder but not a run folder (no {paths.CONFIG}); name a folder `rtlab train` "
                             "wrote, e.g. runs/default/TIME")
        else:
            raise RtlabError(f"'{arg}' is neither a run folder nor an override; give run folders to study "
                             "(rtlab analyze NAME runs/default/TIME) and options as KEY=VALUE (analysis.KEY=VALUE)")
    return runs, overrides


def prepare_folder(name: str, cfg: DictConfig, out: str | None) -> Path:
    """The analysis folder, refusing one that holds an analysis of another configuration."""
    digest = config_hash(cfg)
    folder = Path(out) if out else default_folder(name, cfg)
    record = folder / RESULTS_FILE
    if record.exists():
        old = json.loads(record.read_text())
        if old.get("config_hash") != digest or old.get("analysis") != name:
            raise RtlabError(f"{folder} holds a {old.get('analysis')} analysis of another configuration; choose "
                             "another --out folder (or delete that one)")
    elif any(p.exists() for p in (paths.metrics(folder), paths.summary(folder), Path(folder) / paths.CHECKPOINTS)):
        raise RtlabError(f"{folder} holds a training run, not an analysis; give the analysis its own folder with "
                         "--out DIR")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(paths.config(folder), OmegaConf.to_yaml(cfg, resolve=True))
    if not record.exists():
        write_record(folder, {"analysis": name, "config_hash": digest, "status": "running"})
    return folder


def write_record(folder: Path, record: dict) -> None:
    atomic_write_text(folder / RESULTS_FILE, json.dumps(record, indent=2, default=float))


def read_record(folder: Path) -> dict:
    try:
        return json.loads((Path(folder) / RESULTS_FILE).read_text())
    except FileNotFoundError:
        raise RtlabError(f"{folder} is not an analysis folder (no {RESULTS_FILE})") from None


def render_folder(folder: Path, registry) -> str:
    """Re-draw an analysis folder's plots and write its ``report.md``; returns the Markdown."""
    record = read_record(folder)
    if record.get("status") != "done":
        raise RtlabError(f"the analysis in {folder} has not finished ({record.get('status')}); run its command "
                         "again to resume it")
    config = OmegaConf.to_container(OmegaConf.load(paths.config(folder)))
    check_recorded_plugins(Path(folder), registry, config)
    analysis = registry.build(KIND, _options_from(folder, record["analysis"], registry))
    text = analysis.render(Path(folder), record["results"])
    atomic_write_text(Path(folder) / "report.md", text)
    return text


def _options_from(folder: Path, name: str, registry) -> Any:
    comp = registry.get(KIND, name)
    saved = OmegaConf.load(paths.config(folder)).get(KIND) or {}
    known = {f.name for f in dataclasses.fields(comp.options)}
    opts = comp.options(**{k: v for k, v in OmegaConf.to_container(saved).items() if k in known})
    setattr(opts, "name", name)
    return opts


def run_analysis(name: str, arguments: Sequence[str], out: str | None = None, pm=None) -> Path:
    """``rtlab analyze NAME [RUN …] [OVERRIDES]``: compose, run (resuming), record and render; returns the folder.
    ``arguments`` are run folders to study and Hydra overrides, in any order (:func:`split_arguments`).

    Bad options are refused before the folder is made. A failing analysis is recorded like a failing hook: its
    ``analysis.json`` gets ``"status": "failed"`` and the error, ``error.txt`` the traceback, and the command
    ends with one line naming the analysis and its plugin (a bad input found at the very start, with nothing
    computed yet, leaves no folder behind).
    """
    from framework.api import get_plugin_manager, register_configs

    pm = pm or get_plugin_manager()
    register_configs(pm.registry)
    runs, overrides = split_arguments(arguments)
    cfg, full = compose_analysis(name, overrides, pm.registry, runs)
    analysis = pm.registry.build(KIND, cfg[KIND])  # validates the options before anything is written
    target = Path(out) if out else default_folder(name, cfg)
    fresh = not target.exists()
    # one process per analysis folder: a second one would restart the runs the first is training
    guard = RunLock(target, lambda who: f"analysis folder {target} is in use by a live process ({who}); wait for it "
                    "to finish, or stop it and run this command again")
    guard.acquire()
    try:
        folder = prepare_folder(name, cfg, out)
    except BaseException:
        guard.release(discard=True)  # refused: the folder is left as it was
        if fresh:
            shutil.rmtree(target, ignore_errors=True)
        raise
    try:
        return _run_in(folder, name, analysis, cfg, full, runs, pm, fresh)
    finally:
        guard.release()


def _run_in(folder: Path, name: str, analysis: Any, cfg: DictConfig, full: list[str], runs: list, pm,
            fresh: bool) -> Path:
    """Run, record and render the analysis in ``folder``, which this process holds (see :func:`run_analysis`)."""
    atomic_write_text(folder / "plugins.json", json.dumps(pm.listing(), indent=2))
    ctx = AnalysisContext(name, cfg, full, folder, pm, runs)
    try:
        results = analysis.run(ctx)
    except BaseException as exc:
        _record_failure(folder, name, pm, exc, fresh)
        error = _as_one_line(name, pm, exc, folder)
        if error is exc:
            raise
        raise error from exc
    finally:
        ctx.close()
    record = read_record(folder)
    record.update(status="done", results=results)
    record.pop("error", None)
    write_record(folder, record)
    text = analysis.render(folder, results)
    atomic_write_text(folder / "report.md", text)
    print(text)
    print(f"rtlab analyze {name}: results in {folder}")
    return folder


def default_folder(name: str, cfg: DictConfig) -> Path:
    """``RUN/analyses/NAME-HASH`` for an analysis of runs (the first one's folder), else
    ``runs/<config name>/NAME-HASH``."""
    analysed = cfg.get("analysed") or []
    if analysed:
        return paths.analyses(analysed[0]) / f"{name}-{config_hash(cfg)}"
    return Path("runs") / str(cfg.name) / f"{name}-{config_hash(cfg)}"


def _record_failure(folder: Path, name: str, pm, exc: BaseException, fresh: bool) -> None:
    import traceback

    own = {paths.CONFIG, RESULTS_FILE, paths.PLUGINS, LOCK_NAME}
    if fresh and isinstance(exc, RtlabError) and {p.name for p in folder.iterdir()} <= own:
        shutil.rmtree(folder, ignore_errors=True)  # refused before computing anything: leave no trace
        return
    interrupted = not isinstance(exc, Exception)
    record = read_record(folder)
    record.update(status="interrupted" if interrupted else "failed", error=str(_as_one_line(name, pm, exc, folder)))
    write_record(folder, record)
    atomic_write_text(folder / "error.txt", "".join(traceback.format_exception(exc)))


def _as_one_line(name: str, pm, exc: BaseException, folder: Path) -> BaseException:
    """What the command prints: bad input as it is, anything else as a failure of the analysis's plugin."""
    from framework.api import PluginError

    if isinstance(exc, (RtlabError, PluginError)) or not isinstance(exc, Exception):
        return exc
    plugin = pm.registry.get(KIND, name).plugin
    detail = " ".join(str(exc).split())[:300]
    return PluginError(plugin, f"analysis '{name}'", exc,
                       f"analysis '{name}' (plugin {plugin}) failed: {type(exc).__name__}"
                       + (f": {detail}" if detail else "") + f"; the traceback is in {folder / 'error.txt'}")


# ------------------------------------------------------------------------------------------------------- command
def configure(parser: argparse.ArgumentParser) -> None:
    from framework.api import describe_options, get_plugin_manager, option_help

    registry = get_plugin_manager().registry
    sub = parser.add_subparsers(dest="analysis", metavar="ANALYSIS")
    for comp in registry.components(KIND):
        helps = option_help(comp.options)
        options = "\n".join(f"  analysis.{n}={d!r}" + (f"\n      {helps[n]}" if n in helps else "")
                             for n, _, d in describe_options(comp.options))
        p = sub.add_parser(comp.name, help=comp.doc, formatter_class=argparse.RawDescriptionHelpFormatter,
                           description=f"{comp.doc}\n\noptions (Hydra overrides analysis.NAME=VALUE, defaults shown):"
                                       f"\n{options}")
        p.add_argument("arguments", nargs="*", metavar="RUN|OVERRIDE",
                       help="run folders to study, and Hydra overrides: experiment=PRESET analysis.KEY=VALUE …")
        p.add_argument("--out", help="output folder (default: RUN/analyses/ANALYSIS-HASH for runs, else "
                       "runs/NAME/ANALYSIS-HASH; the same folder resumes)")


def command(args: argparse.Namespace) -> int:
    if not args.analysis:
        from framework.api import get_plugin_manager

        names = get_plugin_manager().registry.names(KIND)
        raise RtlabError(f"name an analysis: rtlab analyze {{{','.join(names)}}} [RUN …] [OVERRIDES]")
    run_analysis(args.analysis, args.arguments, args.out)
    return 0


@hookimpl
def rtlab_add_commands(commands):
    commands.add("analyze", "run an analysis: imp, barrier, landscape, … (Hydra overrides)", configure, command)
