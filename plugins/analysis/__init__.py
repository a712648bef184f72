"""Analyses as plugins: the ``analysis`` component kind and the ``rtlab analyze NAME [OVERRIDES]`` command.

An analysis is a component of kind ``analysis`` (config group ``analysis``): its options dataclass subclasses
:class:`AnalysisOptions` and becomes the ``analysis`` section of the configuration, so an analysis takes Hydra
overrides exactly like ``rtlab train`` (``rtlab analyze imp experiment=paper_fig8_imp_cpu analysis.rounds=3
optimizer.lr=0.05``). The rest of the configuration (backbone, data, objective, optimiser, …) is the
configuration of the training runs the analysis drives. ``factory(options)`` returns an object with

* ``run(ctx: AnalysisContext) -> dict`` — do the work in ``ctx.out_dir`` and return JSON-able results; every
  training run goes through ``ctx.train`` so finished runs are skipped when the analysis is started again;
* ``render(out_dir: Path, results: dict) -> str`` — draw the plots (``out_dir/plots``) and return a Markdown
  summary; ``rtlab report`` calls it again later.

A third-party analysis registers itself the same way (declare the kind first with :func:`declare_kind`; the
declaration is idempotent). The output folder is ``runs/<name>/<analysis>-<hash of the configuration>`` unless
``--out DIR`` is given: running the same command again resumes where it stopped.

This package is itself the plugin ``analysis`` (the kind and the command). Its modules:

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Protocol, Sequence

from omegaconf import DictConfig, OmegaConf

from framework.api import hookimpl
from framework.api import atomic_write_text
from framework.api import LOCK_NAME, RtlabError, RunLock
from framework.api import check_recorded_plugins

log = logging.getLogger("rtlab")

KIND = "analysis"
RESULTS_FILE = "analysis.json"
# Settings that change how a run is shown, never what it computes: left out of the folder hash.
PRESENTATION_SECTIONS = ("progress", "tensorboard")


@dataclass
class AnalysisOptions:
    """Settings every analysis has."""

    # Training runs the analysis needs first (e.g. a distilled student): NAME → `rtlab train` overrides. They are
    # trained inside the analysis folder (pretrain/NAME, with an `initial` checkpoint) and named @NAME in specs.
    pretrain: Dict[str, List[str]] = field(default_factory=dict)


class Analysis(Protocol):
    def run(self, ctx: "AnalysisContext") -> dict:
        """Do the work in ``ctx.out_dir``; return JSON-able results (written to ``analysis.json``)."""

    def render(self, out_dir: Path, results: dict) -> str:
        """Plots into ``out_dir/plots`` and a Markdown summary of ``results``."""


def declare_kind(registry) -> None:
    registry.add_kind(KIND, "an analysis run by `rtlab analyze NAME` (IMP, barrier, landscape, …)", group=KIND,
                      options_base=AnalysisOptions, select_hint="(run one with: rtlab analyze NAME)")


class AnalysisContext:
    """What an analysis works with: its configuration, its folder, and training runs that resume."""

    def __init__(self, name: str, cfg: DictConfig, overrides: Sequence[str], out_dir: Path, pm) -> None:
        self.name = name
        self.cfg = cfg
        self.overrides = list(overrides)
        self.out_dir = out_dir
        self.pm = pm
        self.registry = pm.registry
        self.open_runs: list = []  # evaluation runs: their run-folder locks are released when the analysis ends

    def close(self) -> None:
        for run in self.open_runs:
            run.release()
        self.open_runs.clear()

    @property
    def options(self) -> Any:
        from framework.api import to_options

        return to_options(self.cfg[KIND])

    def compose(self, extra: Sequence[str] = ()) -> DictConfig:
        """The analysis's configuration with ``extra`` overrides applied after the user's."""
        from framework.api import check_config, compose

        cfg = compose([*self.overrides, *extra], self.registry)
        check_config(cfg, self.registry)
        return cfg

    def train(self, folder: str, extra: Sequence[str] = (), prepare: Callable[[Any], None] | None = None,
              cfg: DictConfig | None = None) -> dict:
        """Train one run into ``out_dir/folder`` (the analysis's configuration + ``extra``) and return its summary.

        A run whose ``summary.json`` exists is finished and is not trained again; a folder without one is what an
        interrupted run left behind and is started over.
        """
        from framework.api import clear_unfinished, run_training

        out = self.out_dir / folder
        summary_file = out / "summary.json"
        if summary_file.exists():
            return json.loads(summary_file.read_text())
        if out.exists():
            log.warning("restarting the unfinished run %s", out)
            clear_unfinished(out, lambda who: f"run {out} of the analysis is in use by a live run ({who}); wait "
                             "for it to finish or stop it, then run the analysis again")
        cfg = cfg if cfg is not None else self.compose(extra)
        print(f"rtlab analyze {self.name}: training {folder}", flush=True)
        return run_training(cfg, out, self.pm, prepare)

    def evaluation_run(self, folder: str = "eval"):
        """A run built from the analysis's configuration and never trained: data on its device, networks of the
        analysed architecture, evaluators. Analyses load the weights they study into it."""
        from framework.api import Run

        run = Run(self.cfg, self.out_dir / folder, self.pm)
        self.open_runs.append(run)
        return run.setup()

    def pretrained(self, name: str) -> Path:
        """The folder of pretrain run ``name`` (``analysis.pretrain.NAME``), trained first when missing."""
        from framework.api import check_config, compose

        runs = self.cfg[KIND].get("pretrain") or {}
        if name not in runs:
            known = ", ".join(runs) or "none"
            raise RtlabError(f"@{name} names no run of analysis.pretrain (defined: {known}); add "
                             f"+analysis.pretrain.{name}=[OVERRIDES] or name a checkpoint path")
        folder = f"pretrain/{name}"
        if not (self.out_dir / folder / "summary.json").exists():
            cfg = compose(list(runs[name]), self.registry)
            check_config(cfg, self.registry)
            self.train(folder, cfg=cfg, prepare=lambda run: run.save_checkpoint("initial"))
        return self.out_dir / folder


def config_hash(cfg: DictConfig) -> str:
    """A short hash of everything in ``cfg`` that affects results."""
    data = OmegaConf.to_container(cfg, resolve=True)
    for section in PRESENTATION_SECTIONS:
        data.pop(section, None)  # type: ignore[union-attr]
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:10]


def compose_analysis(name: str, overrides: Sequence[str], registry) -> tuple[DictConfig, list[str]]:
    """The configuration of ``rtlab analyze NAME OVERRIDES`` and the full override list that composes it."""
    from framework.api import check_config, compose

    registry.get(KIND, name)
    overrides = list(overrides)
    if any(o.split("=", 1)[0].lstrip("+~") == KIND for o in overrides):
        raise RtlabError(f"the analysis is chosen by the command (rtlab analyze {name}); drop the analysis= "
                         "override")
    # a preset may already select an analysis; see which one (without the analysis's own settings)
    chosen = compose([o for o in overrides if not o.lstrip("+~").startswith(f"{KIND}.")], registry).get(KIND)
    if chosen is not None and chosen.get("name") != name:
        raise RtlabError(f"this configuration is for analysis '{chosen.get('name')}', not '{name}'; run rtlab "
                         f"analyze {chosen.get('name')} or choose another experiment")
    full = overrides if chosen is not None else [f"+{KIND}={name}", *overrides]
    cfg = compose(full, registry)
    check_config(cfg, registry)
    return cfg, full


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
    elif any((folder / n).exists() for n in ("metrics.jsonl", "summary.json", "checkpoints")):
        raise RtlabError(f"{folder} holds a training run, not an analysis; give the analysis its own folder with "
                         "--out DIR")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
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
    config = OmegaConf.to_container(OmegaConf.load(Path(folder) / "config.yaml"))
    check_recorded_plugins(Path(folder), registry, config)
    analysis = registry.build(KIND, _options_from(folder, record["analysis"], registry))
    text = analysis.render(Path(folder), record["results"])
    atomic_write_text(Path(folder) / "report.md", text)
    return text


def _options_from(folder: Path, name: str, registry) -> Any:
    comp = registry.get(KIND, name)
    saved = OmegaConf.load(Path(folder) / "config.yaml").get(KIND) or {}
    known = {f.name for f in dataclasses.fields(comp.options)}
    opts = comp.options(**{k: v for k, v in OmegaConf.to_container(saved).items() if k in known})
    setattr(opts, "name", name)
    return opts


def run_analysis(name: str, overrides: Sequence[str], out: str | None = None, pm=None) -> Path:
    """``rtlab analyze NAME OVERRIDES``: compose, run (resuming), record and render; returns the folder.

    Bad options are refused before the folder is made. A failing analysis is recorded like a failing hook: its
    ``analysis.json`` gets ``"status": "failed"`` and the error, ``error.txt`` the traceback, and the command
    ends with one line naming the analysis and its plugin (a bad input found at the very start, with nothing
    computed yet, leaves no folder behind).
    """
    from framework.api import register_configs
    from framework.api import get_plugin_manager

    pm = pm or get_plugin_manager()
    register_configs(pm.registry)
    cfg, full = compose_analysis(name, overrides, pm.registry)
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
        return _run_in(folder, name, analysis, cfg, full, pm, fresh)
    finally:
        guard.release()


def _run_in(folder: Path, name: str, analysis: Any, cfg: DictConfig, full: list[str], pm, fresh: bool) -> Path:
    """Run, record and render the analysis in ``folder``, which this process holds (see :func:`run_analysis`)."""
    atomic_write_text(folder / "plugins.json", json.dumps(pm.listing(), indent=2))
    ctx = AnalysisContext(name, cfg, full, folder, pm)
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
    return Path("runs") / str(cfg.name) / f"{name}-{config_hash(cfg)}"


def _record_failure(folder: Path, name: str, pm, exc: BaseException, fresh: bool) -> None:
    import traceback

    own = {"config.yaml", RESULTS_FILE, "plugins.json", LOCK_NAME}
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
    from framework.api import get_plugin_manager
    from framework.api import describe_options, option_help

    registry = get_plugin_manager().registry
    sub = parser.add_subparsers(dest="analysis", metavar="ANALYSIS")
    for comp in registry.components(KIND):
        helps = option_help(comp.options)
        options = "\n".join(f"  analysis.{n}={d!r}" + (f"\n      {helps[n]}" if n in helps else "")
                             for n, _, d in describe_options(comp.options))
        p = sub.add_parser(comp.name, help=comp.doc, formatter_class=argparse.RawDescriptionHelpFormatter,
                           description=f"{comp.doc}\n\noptions (Hydra overrides analysis.NAME=VALUE, defaults shown):"
                                       f"\n{options}")
        p.add_argument("overrides", nargs="*", help="Hydra overrides: experiment=PRESET analysis.KEY=VALUE …")
        p.add_argument("--out", help="output folder (default: runs/NAME/ANALYSIS-HASH; the same folder resumes)")


def command(args: argparse.Namespace) -> int:
    if not args.analysis:
        from framework.api import get_plugin_manager

        names = get_plugin_manager().registry.names(KIND)
        raise RtlabError(f"name an analysis: rtlab analyze {{{','.join(names)}}} [OVERRIDES]")
    run_analysis(args.analysis, args.overrides, args.out)
    return 0


@hookimpl
def rtlab_register(registry):
    declare_kind(registry)


@hookimpl
def rtlab_add_commands(commands):
    commands.add("analyze", "run an analysis: imp, barrier, landscape, … (Hydra overrides)", configure, command)
