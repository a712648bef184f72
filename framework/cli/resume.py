"""``rtlab train resume=RUN_DIR`` and ``resume=auto``: which run folder a run continues in, with which config.

* ``resume=RUN_DIR`` continues the run in ``RUN_DIR``: its own overrides (Hydra's ``.hydra/overrides.yaml``)
  plus the ones given now (later ones win, e.g. ``train.epochs=40`` to train longer), composed again and checked
  against the run's ``config.yaml``: a setting that changed without being overridden now (the YAML defaults
  changed since the run started) is refused, so a resumed run is the run it claims to be. The CLI sets
  ``hydra.run.dir=RUN_DIR`` itself.
* ``resume=auto`` looks, beside where Hydra would put a new run of this configuration (the parent of
  ``hydra.run.dir``, ``runs/<name>/`` by default), for the most recently active unfinished run (no
  ``summary.json``) whose ``config.yaml`` equals this configuration, and continues it; when there is none it
  starts a new run. A job script that always says ``resume=auto`` is safe to requeue.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from framework._base import paths
from framework._base.errors import RtlabError
from framework._base.provenance import check_recorded_plugins
from framework._base.registry import Registry
from framework._config.compose import compose

RESUME_ARG = "resume="
AUTO = "auto"


@dataclass
class ResumePlan:
    """Where a resumed run goes (``run_dir`` None: nothing to resume, start a new run) and its overrides."""

    run_dir: Path | None
    overrides: list[str]


def take_resume_arg(argv: Sequence[str]) -> tuple[list[str], str | None]:
    """(the arguments without ``resume=…``, its value or None)."""
    rest = [a for a in argv if not a.startswith(RESUME_ARG)]
    values = [a[len(RESUME_ARG):] for a in argv if a.startswith(RESUME_ARG)]
    if len(values) > 1:
        raise RtlabError(f"resume= is given {len(values)} times; give one run folder (or auto)")
    if values and not values[0]:
        raise RtlabError("resume= needs a value: resume=RUN_DIR (a run folder) or resume=auto")
    return rest, (values[0] if values else None)


def hydra_run_dir_arg(run_dir: Path) -> str:
    """The Hydra override that puts the run in ``run_dir`` (quoted: paths may hold spaces, commas, '=')."""
    return "hydra.run.dir='" + str(run_dir).replace("'", "\\'") + "'"


def _keys(overrides: Sequence[str]) -> list[str]:
    try:
        return [o.key_or_group for o in OverridesParser.create().parse_overrides(list(overrides))]
    except HydraException as exc:
        raise RtlabError(f"cannot parse overrides: {' '.join(str(exc).split())}") from None


def merge_overrides(old: Sequence[str], new: Sequence[str]) -> list[str]:
    """``old`` without the settings ``new`` overrides again, then ``new``."""
    replaced = set(_keys(new))
    return [o for o, k in zip(old, _keys(old)) if k not in replaced] + list(new)


def config_differences(saved: Any, now: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, saved value, current value) of every setting that differs between two config trees."""
    if isinstance(saved, dict) and isinstance(now, dict):
        out: list[tuple[str, Any, Any]] = []
        for k in sorted(set(saved) | set(now), key=str):
            out += config_differences(saved.get(k, "<absent>"), now.get(k, "<absent>"), f"{prefix}{k}.")
        return out
    return [] if saved == now else [(prefix.rstrip("."), saved, now)]


def _container(cfg: DictConfig) -> dict[str, Any]:
    """The run's settings as plain data (Hydra's own node left out: some of it resolves only in a job)."""
    task = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])
    return OmegaConf.to_container(task, resolve=True)  # type: ignore[return-value]


def _saved_config(run_dir: Path) -> dict[str, Any]:
    try:
        return OmegaConf.to_container(OmegaConf.load(paths.config(run_dir)))  # type: ignore[return-value]
    except Exception as exc:
        raise RtlabError(f"{run_dir / 'config.yaml'} is unreadable ({type(exc).__name__}); that run cannot be "
                         "resumed") from None


def _under(key: str, roots: Sequence[str]) -> bool:
    return any(key == r or key.startswith(r + ".") for r in roots)


def plan_resume(value: str, overrides: Sequence[str], registry: Registry, config_dirs: Sequence[str] = ()
                ) -> ResumePlan:
    """The folder and overrides for ``resume=value`` given the new ``overrides`` (see the module notes);
    ``config_dirs`` are the ``-cd`` folders of this command (give the run's own again when it had some)."""
    given = [o.split("=", 1)[1] for o in overrides if o.lstrip("+~").split("=", 1)[0] == "hydra.run.dir" and "=" in o]
    if any(k.startswith("hydra.run.dir") for k in _keys(overrides)):
        if value == AUTO and given:  # the user named the folder: that folder is the one to continue
            raise RtlabError(f"resume=auto looks for the run folder itself; to continue the run in {given[0]}, "
                             f"write resume={given[0]} and drop hydra.run.dir")
        raise RtlabError("resume= picks the run folder itself; drop hydra.run.dir")
    if value == AUTO:
        return _plan_auto(overrides, registry, config_dirs)
    return _plan_dir(Path(value).expanduser(), overrides, registry, config_dirs)


def _plan_dir(run_dir: Path, overrides: Sequence[str], registry: Registry, config_dirs: Sequence[str]
              ) -> ResumePlan:
    run_dir = run_dir.resolve()
    if not run_dir.is_dir():
        raise RtlabError(f"resume={run_dir}: no such run folder; give the folder of an earlier run (it holds "
                         "config.yaml) or resume=auto")
    saved_overrides = run_dir / ".hydra" / "overrides.yaml"
    if not paths.config(run_dir).is_file() or not saved_overrides.is_file():
        raise RtlabError(f"{run_dir} is not the folder of an rtlab run (config.yaml and .hydra/overrides.yaml "
                         "are missing); give the folder 'rtlab train' printed as its output")
    if paths.summary(run_dir).exists() and not overrides:
        raise RtlabError(f"the run in {run_dir} already finished (summary.json); to train it longer, resume it "
                         "with a larger train.epochs=N")
    old = OmegaConf.to_container(OmegaConf.load(saved_overrides))
    if not isinstance(old, list) or not all(isinstance(o, str) for o in old):
        raise RtlabError(f"{saved_overrides} is not a list of overrides; that run cannot be resumed")
    check_recorded_plugins(run_dir, registry, _saved_config(run_dir))
    merged = merge_overrides(old, overrides)
    cfg = compose(merged, registry, config_dirs)
    changed = [d for d in config_differences(_saved_config(run_dir), _container(cfg))
               if not _under(d[0], _keys(overrides))]
    if changed:
        key, was, now = changed[0]
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise RtlabError(f"the configuration of {run_dir} changed since the run started: {key} was {was}, is now "
                         f"{now}{more}; add {key}={was} to resume it as it was, or start a new run")
    return ResumePlan(run_dir, merged)


def _candidates(target: Path) -> list[Path]:
    if paths.config(target).is_file():
        return [target]
    parent = target.parent
    if not parent.is_dir():
        return []
    return [d for d in parent.iterdir() if d.is_dir() and paths.config(d).is_file()]


def _last_active(run_dir: Path) -> float:
    marks = [paths.state(run_dir).with_suffix(".json"), paths.metrics(run_dir), paths.config(run_dir)]
    return max(p.stat().st_mtime for p in marks if p.exists())


def _same_config(run_dir: Path, wanted: dict[str, Any]) -> bool:
    try:
        return not config_differences(_saved_config(run_dir), wanted)
    except RtlabError:  # an unreadable folder is not a match
        return False


def _plan_auto(overrides: Sequence[str], registry: Registry, config_dirs: Sequence[str]) -> ResumePlan:
    cfg = compose(overrides, registry, config_dirs, hydra_config=True)
    try:
        target = Path(str(OmegaConf.select(cfg, "hydra.run.dir"))).expanduser().resolve()
    except Exception:  # a run-folder pattern that needs a running job to resolve
        target = (Path("runs") / str(cfg.name) / "_").resolve()
    wanted = _container(cfg)
    matches = [d for d in _candidates(target) if not paths.summary(d).exists() and _same_config(d, wanted)]
    if not matches:
        return ResumePlan(None, list(overrides))
    return ResumePlan(max(matches, key=_last_active), list(overrides))
