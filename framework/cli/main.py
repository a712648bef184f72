"""The ``rtlab`` command: ``train`` (Hydra overrides), ``plugins``, ``backbones`` and plugin-contributed commands.

Bad input ends with exit code 2 and one line on stderr that names the problem and the fix.
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import json
import logging
import os
import sys
from typing import Any, Sequence

from framework import __version__
from framework._base import paths
# Lazy imports: every import inside a function of this module is deferred so that `rtlab --help`, `--version` and a
# cached `rtlab plugins` answer without importing torch, Hydra, timm or the plugins (tests/test_quick_cli.py).
from framework._base.commands import CommandSet
from framework._base.errors import PluginError, RtlabError, RunInterrupted

_HYDRA_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                      "--config-dir", "-cd", "--info", "--experimental-rerun"}
_HYDRA_FLAGS = {"--multirun", "-m", "--resolve", "--help", "-h", "--hydra-help", "--version", "--run", "-r",
                "--shell-completion", "-sc"}


def fail(message: str, code: int = 2) -> int:
    print(f"rtlab: error: {' '.join(str(message).split())}", file=sys.stderr)
    return code


# ------------------------------------------------------------------------------------------------------- train
def split_hydra_args(argv: Sequence[str]) -> tuple[list[str], bool, list[str]]:
    """(overrides, multirun?, extra config dirs) from a ``rtlab train`` command line."""
    overrides: list[str] = []
    config_dirs: list[str] = []
    multirun = False
    skip: str | None = None
    for arg in argv:
        if skip is not None:
            if skip in ("--config-dir", "-cd"):
                config_dirs.append(arg)
            skip = None
            continue
        flag, eq, value = arg.partition("=")
        if arg in ("--multirun", "-m"):
            multirun = True
        elif flag in ("--config-dir", "-cd") and eq:
            config_dirs.append(value)
        elif arg in _HYDRA_VALUE_FLAGS:
            skip = arg
        elif arg.startswith("-"):
            continue
        else:
            overrides.append(arg)
    return overrides, multirun, config_dirs


def train_command(argv: Sequence[str]) -> int:
    """``rtlab train [resume=RUN_DIR|auto] [hydra overrides]``: compose, check, then hand over to Hydra for run
    folders and sweeps."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from framework._config.compose import (
        check_config,
        check_overrides,
        compose,
        config_dir,
        register_configs,
    )
    from framework._contract.plugin_manager import get_plugin_manager
    from framework._nets import distributed
    from framework._run.loop import run_training
    from framework.cli.resume import hydra_run_dir_arg, plan_resume, take_resume_arg
    from framework.cli.runfolder import FolderClaim, os_error_line, prepare_hydra_argv

    pm = get_plugin_manager()
    register_configs(pm.registry)
    argv, resume = take_resume_arg(argv)
    overrides, multirun, config_dirs = split_hydra_args(argv)
    resuming = False
    if resume is not None:
        if multirun:
            raise RtlabError("resume= continues one run; it cannot be combined with -m/--multirun")
        plan = plan_resume(resume, overrides, pm.registry, config_dirs)
        if plan.run_dir is not None:
            flags = [a for a in argv if a not in overrides]
            argv = [*flags, *plan.overrides, hydra_run_dir_arg(plan.run_dir)]
            overrides, resuming = plan.overrides, True
            print(f"rtlab: resuming {plan.run_dir}", file=sys.stderr)
        else:
            print("rtlab: resume=auto found no unfinished run of this configuration; starting a new one",
                  file=sys.stderr)
    informational = any(a in ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info") for a in argv)
    if informational:
        pass  # Hydra prints; nothing runs
    elif multirun:
        check_overrides(overrides, pm.registry)
    else:
        check_config(compose(overrides, pm.registry, config_dirs), pm.registry)
    if distributed.launched():
        if multirun:
            raise RtlabError("torchrun starts one data-parallel run; it cannot be combined with -m/--multirun")
        argv = distributed_argv(argv, overrides, config_dirs)
    subdir = None
    if not informational:  # nothing is written into the run folder before the run owns it (framework.cli.runfolder)
        argv, subdir = prepare_hydra_argv(argv, split_hydra_args(argv)[0], pm.registry, config_dirs, multirun)

    @hydra.main(config_path=str(config_dir()), config_name="config", version_base=None)
    def app(cfg: Any) -> Any:
        from hydra.types import RunMode

        from framework.cli import sweeps

        hydra_cfg = HydraConfig.get()
        out_dir, resume_job = hydra_cfg.runtime.output_dir, resuming
        folder = FolderClaim(out_dir, subdir, copy.deepcopy(cfg))
        try:
            check_config(cfg, pm.registry)
            if hydra_cfg.mode == RunMode.MULTIRUN:  # skip finished jobs, continue unfinished ones (sweeps.py)
                distributed.init(prefer_cuda=str(cfg.train.device) != "cpu")  # the srun tasks of a submitit job
                plan = distributed.broadcast(sweeps.job_plan(out_dir, cfg) if distributed.rank() == 0 else None)
                if plan == sweeps.SKIP:
                    print(f"rtlab: {out_dir} already finished with this configuration; skipped", file=sys.stderr)
                    return json.loads(paths.summary(out_dir).read_text()).get("metrics")
                if plan == sweeps.RESUME:
                    print(f"rtlab: resuming {out_dir}", file=sys.stderr)
                resume_job = plan == sweeps.RESUME
                sweeps.pin_threads(hydra_cfg.launcher, cfg)
            summary = run_training(cfg, out_dir, pm, resume=resume_job, claim=folder.claim)
        except (RtlabError, PluginError, RunInterrupted) as exc:
            line = os_error_line(exc.error, out_dir) if isinstance(exc, PluginError) else None
            raise SystemExit(fail(line or str(exc), 2 if line else exc.exit_code))
        except OSError as exc:
            line = os_error_line(exc, out_dir)
            if line is None:
                raise
            raise SystemExit(fail(line))
        finally:
            folder.close()
        errors = summary.get("errors") or []
        if errors:
            more = f" (and {len(errors) - 1} more, listed in summary.json)" if len(errors) > 1 else ""
            raise SystemExit(fail(f"the run finished, but {errors[0]['error']}{more}; the training results are in "
                                  f"{HydraConfig.get().runtime.output_dir}", 1))
        return summary.get("metrics")

    saved = sys.argv
    sys.argv = ["rtlab train", *argv]
    try:
        app()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved
    return 0


def distributed_argv(argv: list[str], overrides: list[str], config_dirs: list[str]) -> list[str]:
    """Under torchrun: join the process group and give every process rank 0's run folder (Hydra would stamp
    each with its own clock); only rank 0 writes Hydra's files and log."""
    from framework._config.compose import compose
    from framework._nets import distributed

    distributed.init(prefer_cuda=not any(o.startswith("train.device=cpu") for o in overrides))
    extra: list[str] = []
    if not any(a.lstrip("+").startswith("hydra.run.dir=") for a in argv):
        run_dir = None
        if distributed.rank() == 0:
            run_dir = str(compose(overrides, config_dirs=config_dirs, hydra_config=True).hydra.run.dir)
        extra.append(f"hydra.run.dir={distributed.broadcast(run_dir)}")
    if distributed.rank() != 0:
        extra += ["hydra.output_subdir=null", "hydra/job_logging=stdout"]
    return [*argv, *extra]


# ----------------------------------------------------------------------------------------------------- plugins
def plugin_listing(pm) -> list[dict[str, Any]]:
    """``pm.listing()`` with the sub-commands each plugin contributes (what ``rtlab plugins`` shows)."""
    listing = pm.listing()
    commands = commands_by_plugin(pm)
    for p in listing:
        p["commands"] = commands.get(p["name"], [])
    return listing


def plugins_command(args: argparse.Namespace, listing: list[dict[str, Any]] | None = None) -> int:
    if listing is None:
        from framework._contract.plugin_manager import get_plugin_manager

        listing = plugin_listing(get_plugin_manager())
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    width = max(len(p["name"]) for p in listing)
    for p in listing:
        origin = "built-in" if p["builtin"] else "entry point"
        print(f"{p['name']:{width}}  {p['version'] or '-':8}  {p['module']}  ({origin})")
        by_kind: dict[str, list[str]] = {}
        for c in p["components"]:
            by_kind.setdefault(c["kind"], []).append(c["name"])
        for preset in p.get("presets", []):
            by_kind.setdefault(f"{preset['group']} (preset)", []).append(preset["name"])
        for kind, names in sorted(by_kind.items()):
            print(f"{'':{width}}    {kind}: {', '.join(sorted(names))}")
        if p["settings"]:
            print(f"{'':{width}}    settings: {', '.join(p['settings'])}")
        hooks = [h for h in p["hooks"] if h != "rtlab_register"]
        if hooks:
            print(f"{'':{width}}    hooks: {', '.join(h.removeprefix('rtlab_') for h in hooks)}")
        if p["commands"]:
            print(f"{'':{width}}    command: {', '.join(p['commands'])}")
    return 0


def commands_by_plugin(pm) -> dict[str, list[str]]:
    """The ``rtlab`` sub-commands each plugin contributes (asked one plugin at a time)."""
    out: dict[str, list[str]] = {}
    for impl in pm.hook.rtlab_add_commands.get_hookimpls():
        own = CommandSet()
        impl.function(commands=own)
        out[impl.plugin_name] = sorted(own.commands)
    return out


def backbones_command(args: argparse.Namespace) -> int:
    import timm  # lazy: timm takes ~1 s to import; only `rtlab backbones` pays it

    from framework._contract.plugin_manager import get_plugin_manager
    from framework._nets.models import adapter_for

    registry = get_plugin_manager().registry
    pattern = args.pattern or "*"
    if not any(ch in pattern for ch in "*?["):
        pattern = f"*{pattern}*"
    names = [n for n in timm.list_models() if fnmatch.fnmatch(n, pattern)]
    if not names:
        return fail(f"no timm model matches '{args.pattern}'; try a shorter pattern such as 'resnet'")
    for n in names:
        print(f"{n}  ({adapter_for(registry, n).name})" if args.adapters else n)
    print(f"{len(names)} backbones", file=sys.stderr)
    return 0


# -------------------------------------------------------------------------------------------------------- main
def build_parser(commands: CommandSet) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtlab", description="Teacher-student self-distillation studies on any "
                                     "timm backbone and any Hugging Face image dataset.")
    parser.add_argument("--version", action="version", version=f"rtlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("train", help="train (Hydra overrides: backbone=NAME data=… teacher.seed=3 …; -m sweeps)",
                   add_help=False)
    p = sub.add_parser("plugins", help="list loaded plugins and the components each contributes")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("backbones", help="list backbone names (any timm model)")
    p.add_argument("pattern", nargs="?", help="glob or substring, e.g. 'resnet*' or vit")
    p.add_argument("--adapters", action="store_true", help="show the family adapter of each backbone")
    for cmd in commands.commands.values():
        cmd.configure(sub.add_parser(cmd.name, help=cmd.help))
    return parser


def quick_answer(argv: list[str]) -> int | None:
    """``rtlab --version``, ``rtlab [--help]`` and ``rtlab plugins [--json]`` without loading the plugins (which
    imports torch): the version needs nothing, the others the listing stored by the last command that loaded them
    (:mod:`framework.cli.listing_cache`). None: load the plugins."""
    if argv == ["--version"]:
        print(f"rtlab {__version__}")
        return 0
    if not (argv in ([], ["-h"], ["--help"]) or (argv[:1] == ["plugins"] and set(argv[1:]) <= {"--json"})):
        return None
    from framework.cli import listing_cache

    cached = listing_cache.load()
    if cached is None:
        return None
    commands = CommandSet()
    for name, help in cached["commands"].items():
        commands.add(name, help, lambda parser: None, lambda args: 0)
    parser = build_parser(commands)
    if argv[:1] != ["plugins"]:
        parser.print_help()
        return 0
    return plugins_command(parser.parse_args(argv), cached["plugins"])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=os.environ.get("RTLAB_LOG_LEVEL", "WARNING"), format="%(levelname)s %(message)s")
    try:
        if argv and argv[0] == "train":
            return train_command(argv[1:])
        answered = quick_answer(argv)
        if answered is not None:
            return answered
        from framework._contract.plugin_manager import get_plugin_manager
        from framework.cli import listing_cache

        pm = get_plugin_manager()
        commands = CommandSet()
        builtin = {"plugins": plugins_command, "backbones": backbones_command}
        pm.hook.rtlab_add_commands(commands=commands)
        listing = plugin_listing(pm)
        if pm.standard:  # not a manager a test or a script filled with plugins of its own
            listing_cache.store(listing, {n: c.help for n, c in commands.commands.items()})
        args = build_parser(commands).parse_args(argv)
        if args.command is None:
            build_parser(commands).print_help()
            return 0
        if args.command == "plugins":
            return plugins_command(args, listing)
        if args.command in builtin:
            return builtin[args.command](args)
        return commands.commands[args.command].run(args) or 0
    except (RtlabError, PluginError, RunInterrupted) as exc:
        return fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return fail("interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
