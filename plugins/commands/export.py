"""``rtlab export RUN``: a trained network as a folder timm loads, with a model card; docs/export.md.

The folder (default ``RUN/export/<part>``, ``RUN/export/<part>-<checkpoint>`` for another checkpoint than
``final``) holds what ``timm.create_model("local-dir:FOLDER", pretrained=True)`` and the Hugging Face Hub read:

* ``model.safetensors`` — the backbone's weights (timm's own keys; the projection head is not part of it);
* ``config.json`` — timm's format: ``architecture``, ``model_args`` (the constructor arguments that rebuild the
  network: input channels, image and patch sizes, …), ``pretrained_cfg`` (input size, the data's mean and std,
  ``num_classes: 0``: the model returns the pooled embedding the probes measured), and an ``rtlab`` section (run,
  checkpoint, resolved backbone options, what loading needs);
* ``README.md`` — the model card: method, data, probe protocol, the results with their controls and intervals.

Where timm cannot rebuild the network from a model name and arguments — rtlab's small-input stems for ResNets and
EfficientNets, a swapped norm layer — the architecture is ``rtlab_backbone`` (:mod:`plugins.networks.adapted`),
and the paper's CIFAR nets are timm names rtlab registers (:mod:`plugins.networks.cifar_nets`): loading those
needs rtlab installed and that module imported; the card and ``config.json`` say so. Every export is loaded back
through timm and must give the embeddings rtlab computes, or the command fails.

``--push-to-hub REPO`` uploads the folder (``huggingface_hub``; refused when ``HF_HUB_OFFLINE`` is set).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from framework.api import RtlabError, atomic_write_bytes, atomic_write_text, hookimpl, paths

WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "README.md"
PARTS = ("student", "teacher")
SKIP_ARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "pretrained_model_args")


# ------------------------------------------------------------------------------------------------ the network
def checkpoint_of(path: Path, name: str | None) -> Path:
    """The checkpoint to export: ``path`` itself, or the run folder's ``checkpoints/<name>`` (``final``, else
    ``last``; ``epoch_N``)."""
    path = Path(path)
    if not path.is_dir():
        return path
    names = [name] if name else [paths.FINAL, paths.STATE]
    for n in names:
        if paths.checkpoint(path, n).with_suffix(".json").exists():
            return paths.checkpoint(path, n)
    folder = path / paths.CHECKPOINTS
    have = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
    raise RtlabError(f"{path} has no checkpoint {' or '.join(names)} (it has: {', '.join(have) or 'none'}); "
                     "choose one with --checkpoint NAME")


def _json_able(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def _probe_batch(in_chans: int, size: tuple[int, int]):
    import torch

    return torch.randn(4, in_chans, *size, generator=torch.Generator().manual_seed(0))


def same_embeddings(a, b, in_chans: int, size: tuple[int, int]) -> bool:
    """Whether two backbones give the same embeddings (eval mode) on a fixed noise batch."""
    import torch

    x = _probe_batch(in_chans, size)
    with torch.no_grad():
        ea, eb = a.eval()(x), b.eval()(x)
    return ea.shape == eb.shape and bool(torch.allclose(ea, eb, rtol=1e-4, atol=1e-5))


def timm_spec(encoder, backbone: dict, in_chans: int, size: tuple[int, int]) -> tuple[str, dict[str, Any]]:
    """(architecture, model_args) that rebuild ``encoder`` in timm: its own model name and constructor arguments
    where those give the same network, else ``rtlab_backbone`` with the resolved backbone options."""
    import timm

    args = {k: v for k, v in (getattr(encoder, "_model_args", None) or {}).items() if k not in SKIP_ARGS}
    if _json_able(args):
        try:
            plain = timm.create_model(backbone["name"], pretrained=False, **args)
            plain.load_state_dict(encoder.state_dict())
            if same_embeddings(plain, encoder, in_chans, size):
                return backbone["name"], args
        except Exception:  # another architecture than timm's (a small-input stem): rebuilt by rtlab's adapters
            pass
    return "rtlab_backbone", {"backbone": backbone, "input_size": list(size), "in_chans": in_chans, "num_classes": 0}


def needs_of(architecture: str) -> str | None:
    """The module to import before timm can build ``architecture`` (None: timm alone)."""
    import timm

    module = timm.models.model_entrypoint(architecture).__module__
    return None if module.split(".")[0] == "timm" else module


def pretrained_cfg(encoder, data: dict, fixed: bool) -> dict[str, Any]:
    """timm's pretrained config of the export: the data's input size and normalisation, no classifier."""
    from timm.models import PretrainedCfg

    fields = {f.name for f in dataclasses.fields(PretrainedCfg)}
    own = {k: v for k, v in (getattr(encoder, "pretrained_cfg", None) or {}).items()
           if k in ("first_conv", "classifier") and v}
    cfg = {**own, "input_size": [int(data["channels"]), *map(int, data["size"])], "fixed_input_size": fixed,
           "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center", "mean": list(data["mean"]),
           "std": list(data["std"]), "num_classes": 0}
    return {k: v for k, v in cfg.items() if k in fields}


# ------------------------------------------------------------------------------------------------ model card
def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score 95 % interval of an accuracy ``p`` measured on ``n`` test images."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def results_section(summary: dict[str, Any], part: str) -> list[str]:
    """The final results of every target with a 95 % interval over the test images (accuracies), and the
    exported network's gains over the controls."""
    from framework.api import CONTROLS, control_key, from_summary, kind_of
    from plugins.tracking.results_table import row_name

    metrics = summary.get("metrics") or {}
    kinds = from_summary(summary)
    n = summary.get("test_images")
    lines = ["| target | metric | value | 95 % interval (test images) |", "|---|---|---|---|"]
    for key, value in metrics.items():
        if "/" not in key or not isinstance(value, (int, float)):
            continue
        metric, target = key.split("/", 1)
        kind = kind_of(metric, kinds)
        interval = "–"
        if kind.accuracy and n and "@" not in target:
            lo, hi = wilson(float(value), int(n))
            interval = f"[{100 * lo:.2f}, {100 * hi:.2f}]"
        lines.append(f"| {row_name(target)} | {metric} | {kind.format(value)} | {interval} |")
    gains = []
    for key, value in metrics.items():
        for control in CONTROLS:
            ck = control_key(key, control)
            if ck is None or ck not in metrics or not kind_of(key.split("/")[0], kinds).accuracy:
                continue
            gains.append(f"| {key.split('/')[0]} | {row_name(key.split('/', 1)[1])} − {row_name(control)} | "
                         f"{100 * (value - metrics[ck]):+.2f} points |")
    if gains:
        lines += ["", "The student against its controls (the random-init teacher, its BN control — the teacher with "
                  "batch-norm statistics re-estimated on the training images — and the input pixels), one run:", "",
                  "| metric | difference | value |", "|---|---|---|", *gains, "",
                  "An interval for a gain needs several seeds: `rtlab compare` and `rtlab aggregate` report paired "
                  "bootstrap intervals over seeds."]
    if part == "teacher":
        lines += ["", "This export is the run's **teacher**."]
    return lines


def model_card(cfg: dict[str, Any] | None, summary: dict[str, Any], meta: dict[str, Any], part: str,
               architecture: str, model_args: dict[str, Any], needs: str | None, source: str) -> str:
    from framework.api import __version__

    data, backbone = meta.get("data", {}), meta.get("backbone", {})
    name = (cfg or {}).get("name") or summary.get("name") or "rtlab"
    lines = ["---", "library_name: timm", "pipeline_tag: image-feature-extraction",
             "tags: [image-feature-extraction, timm, rtlab, self-distillation]", "---", "",
             f"# {name}: the {part} of an rtlab run", "",
             f"A `{backbone.get('name')}` backbone trained by rtlab {meta.get('rtlab_version', __version__)} "
             f"(teacher–student self-distillation), exported from `{source}` (step {meta.get('step')}, epoch "
             f"{meta.get('epoch')}). The model returns the pooled embedding (`num_classes=0`) that rtlab's probes "
             "measured.", "", "## Use it", "", "```python", "import timm"]
    if needs:
        lines.append(f"import {needs}  # registers `{architecture}` with timm (pip install rtlab)")
    lines += ["", 'model = timm.create_model("local-dir:PATH/TO/THIS/FOLDER", pretrained=True)  # or "hf-hub:REPO"',
              "model.eval()", "```", "",
              f"Inputs: {data.get('channels')}×{data.get('size', ['?', '?'])[0]}×{data.get('size', ['?', '?'])[1]} "
              f"images scaled to [0, 1] and normalised with mean {data.get('mean')} and std {data.get('std')} "
              "(`timm.data.resolve_data_config({}, model=model)` reads them from `config.json`)."]
    if needs:
        lines += ["", f"`{architecture}` is not one of timm's own models: "
                  + ("rtlab adapted the network beyond timm's constructor arguments (a small-input stem or a swapped "
                     "norm layer), so it is rebuilt through rtlab's backbone adapters from the options in "
                     "`config.json`" if architecture == "rtlab_backbone" else
                     "it is one of the paper's CIFAR networks that rtlab registers with timm")
                  + f"; loading it needs rtlab installed and `import {needs}` first."]
    lines += ["", "## Method", ""]
    if cfg:
        for section in ("method", "teacher", "student", "updater", "objective", "loss", "augment", "optimizer",
                        "head"):
            value = cfg.get(section)
            if value:
                lines.append(f"- **{section}**: `{json.dumps(value, default=str)}`")
        train = cfg.get("train", {})
        lines.append(f"- **training**: {summary.get('epochs')} epochs, {summary.get('steps')} steps, batch size "
                     f"{train.get('batch_size')}, seed {train.get('seed')}, precision {summary.get('precision')}, "
                     f"{summary.get('wall_time_s')} s on {summary.get('device')}")
    lines.append(f"- **backbone** (resolved options): `{json.dumps(backbone)}`")
    lines += ["", "## Data", "",
              f"`{data.get('name')}`: {summary.get('train_images', '?')} training and {summary.get('test_images', '?')}"
              f" test images of {data.get('channels')}×{'×'.join(map(str, data.get('size', [])))} pixels, "
              f"{data.get('num_classes')} classes."]
    if cfg and cfg.get("data"):
        lines.append(f"Settings: `{json.dumps(cfg['data'], default=str)}`")
    lines += ["", "## Evaluation protocol", ""]
    if cfg:
        lines += [f"- **probes**: `{json.dumps(cfg.get('evaluator'), default=str)}`",
                  f"- **targets, layers, probe seed**: {cfg.get('eval', {}).get('targets')}, "
                  f"{cfg.get('eval', {}).get('layers')}, {cfg.get('eval', {}).get('seed')}"]
    lines += ["", "## Results", ""]
    lines += results_section(summary, part) if summary.get("metrics") else [
        "No evaluation of these weights was recorded (evaluations run after an epoch's checkpoints; `rtlab probe "
        "FOLDER` evaluates this export under the run's protocol)."]
    lines += ["", "## Provenance", "", f"- architecture `{architecture}`, model_args `{json.dumps(model_args)}`",
              f"- versions: `{json.dumps(summary.get('versions') or {'rtlab': meta.get('rtlab_version')})}`", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ the command
def _run_folder(ckpt: Path) -> Path | None:
    folder = ckpt.parent.parent if ckpt.parent.name == paths.CHECKPOINTS else None
    return folder if folder is not None and paths.config(folder).exists() else None


def metrics_at(folder: Path, step: Any) -> dict[str, float]:
    """The results of the evaluations up to optimiser step ``step`` (frozen targets were evaluated once, earlier),
    when one of them evaluated the weights of that step; else none."""
    path = paths.metrics(folder)
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    evals = [r for r in rows if r.get("kind") == "eval" and step is not None and r.get("step", -1) <= step]
    if not evals or evals[-1]["step"] != step:
        return {}
    merged: dict[str, float] = {}
    for row in evals:
        merged.update({k: v for k, v in row.items() if "/" in k})
    return merged


def export(source: str, part: str = "student", checkpoint: str | None = None, out: str | None = None) -> Path:
    """Write the export folder of ``part`` of the run (or checkpoint) ``source``; returns it."""
    from omegaconf import OmegaConf
    from safetensors.torch import save

    from framework.api import get_plugin_manager, network_from_checkpoint

    if part not in PARTS:
        raise RtlabError(f"--part must be student or teacher, got '{part}'")
    ckpt = checkpoint_of(Path(source), checkpoint)
    registry = get_plugin_manager().registry
    net, meta = network_from_checkpoint(registry, ckpt, part)
    encoder = net.encoder.eval()
    data, backbone = meta["data"], meta["backbone"]
    in_chans, size = int(data["channels"]), tuple(int(s) for s in data["size"])
    architecture, model_args = timm_spec(encoder, backbone, in_chans, size)
    needs = needs_of(architecture)
    folder = _run_folder(Path(ckpt).with_suffix(""))
    stem = Path(ckpt).with_suffix("").name
    target = Path(out) if out else (folder or Path(ckpt).parent) / "export" / (part if stem == paths.FINAL
                                                                                  else f"{part}-{stem}")
    fixed = not model_args.get("dynamic_img_size", False) and "img_size" in model_args
    config = {"architecture": architecture, "num_classes": 0, "num_features": int(net.embed_dim),
              "model_args": model_args, "pretrained_cfg": pretrained_cfg(encoder, data, fixed),
              "rtlab": {"part": part, "checkpoint": str(ckpt), "step": meta.get("step"), "epoch": meta.get("epoch"),
                        "backbone": backbone, "needs": needs}}
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in encoder.state_dict().items()}
    atomic_write_bytes(target / WEIGHTS, save(tensors, metadata={"format": "pt"}))
    atomic_write_text(target / CONFIG, json.dumps(config, indent=2))
    cfg = OmegaConf.to_container(OmegaConf.load(paths.config(folder)), resolve=False) if folder else None
    try:
        summary = json.loads(paths.summary(folder).read_text()) if folder else {}
    except (FileNotFoundError, json.JSONDecodeError):
        summary = {}
    if folder is not None and meta.get("step") != summary.get("steps"):  # an earlier checkpoint than the end's
        summary = {**summary, "metrics": metrics_at(folder, meta.get("step"))}
    atomic_write_text(target / CARD, model_card(cfg, summary, meta, part, architecture, model_args, needs,
                                                str(folder or ckpt)))
    loaded = load_export(target)
    if not same_embeddings(loaded, encoder, in_chans, size):
        raise RtlabError(f"the export in {target} does not give rtlab's embeddings when timm loads it; please "
                         "report this with the run's backbone settings")
    return target


def load_export(folder: Path):
    """The exported backbone as timm loads it (``local-dir:FOLDER``), after importing the module it needs."""
    import importlib

    import timm

    needs = json.loads((Path(folder) / CONFIG).read_text()).get("rtlab", {}).get("needs")
    if needs:
        importlib.import_module(needs)
    return timm.create_model(f"local-dir:{Path(folder).resolve()}", pretrained=True).eval()


def offline() -> bool:
    """Whether the Hugging Face Hub is switched off (``HF_HUB_OFFLINE``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def push(folder: Path, repo: str, private: bool) -> str:
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        repo_id = api.create_repo(repo, private=private, exist_ok=True).repo_id
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                          commit_message="rtlab export")
    except Exception as exc:
        raise RtlabError(f"could not push {folder} to the Hub repo {repo} ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:200]}); log in with 'huggingface-cli login' and check the "
                         "repo name; the export itself is complete") from None
    return repo_id


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="a run folder or an rtlab checkpoint")
    parser.add_argument("--part", default="student", choices=PARTS, help="the network to export (default: student)")
    parser.add_argument("--checkpoint", metavar="NAME",
                        help="checkpoint of the run folder: final (default; else last), last, epoch_N")
    parser.add_argument("--out", metavar="DIR", help="the export folder (default: RUN/export/PART[-CHECKPOINT])")
    parser.add_argument("--push-to-hub", metavar="REPO", help="also upload the folder to this Hugging Face Hub repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")


def command(args: argparse.Namespace) -> int:
    if args.push_to_hub and offline():
        raise RtlabError(f"--push-to-hub {args.push_to_hub} needs the Hugging Face Hub, but HF_HUB_OFFLINE is set; "
                         "export without --push-to-hub and upload the folder later (huggingface-cli upload)")
    folder = export(args.run, args.part, args.checkpoint, args.out)
    print(f"rtlab export: {folder} ({WEIGHTS}, {CONFIG}, {CARD})")
    needs = json.loads((folder / CONFIG).read_text())["rtlab"]["needs"]
    if needs:
        print(f"rtlab export: loading it needs rtlab and 'import {needs}' first", file=sys.stderr)
    if args.push_to_hub:
        print(f"rtlab export: pushed to https://huggingface.co/{push(folder, args.push_to_hub, args.private)}")
    return 0


@hookimpl
def rtlab_add_commands(commands):
    commands.add("export", "a trained network as a folder timm and the Hugging Face Hub load, with a model card",
                 configure, command)
