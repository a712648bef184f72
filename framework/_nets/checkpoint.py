"""Checkpoints: safetensors for tensors, JSON for metadata, written atomically; nothing is ever unpickled.

A checkpoint ``NAME`` is two files: ``NAME.safetensors`` and ``NAME.json``. The JSON holds the metadata and the
SHA-256 of the tensor file, so a truncated or altered tensor file fails the hash check with the file's name.

Replacing a checkpoint keeps the previous one readable until the new one is complete: both new files are first
written in full beside the old ones (``.NAME.pending.*``), then renamed over them, tensor file first. A crash
between the two renames leaves the complete pending JSON behind; :func:`load_checkpoint` finishes the switch.

Weights from elsewhere (:func:`load_weights`): safetensors files are read as they are; ``.pt``/``.pth``/``.bin``
files only through ``torch.load(weights_only=True)``, which refuses pickled code.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from framework._base import paths
from framework._base.errors import RtlabError
from framework._base.files import atomic_write_bytes, atomic_write_text, fsync_dir

FORMAT = "rtlab-checkpoint/1"


def _prepare(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, no shared storage (safetensors refuses aliases)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"checkpoint entry '{key}' is a {type(t).__name__}, not a tensor")
        t = t.detach().to("cpu")
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        if ptr in seen or not t.is_contiguous():
            t = t.clone().contiguous()
        if t.numel():
            seen.add(t.untyped_storage().data_ptr())
        out[key] = t
    return out


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None,
                 sync_dir: bool = True) -> str:
    """Atomically write ``tensors`` to ``path`` (a .safetensors file); returns its SHA-256."""

    blob = save_safetensors(_prepare(tensors), metadata={"rtlab": json.dumps(dict(meta or {}), default=str)})
    atomic_write_bytes(Path(path), blob, sync_dir)
    return hashlib.sha256(blob).hexdigest()


def load_tensors(path: Path, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and the embedded metadata of a .safetensors file; a broken file raises :class:`RtlabError`."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise RtlabError(f"checkpoint file {path} does not exist") from None
    except OSError as exc:
        raise RtlabError(f"cannot read {path} ({exc.strerror})") from None
    return _parse_tensors(blob, path, device)


def _parse_tensors(blob: bytes, path: Path, device: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    try:
        tensors = load_safetensors(blob)
        meta = _embedded_meta(blob)
    except (SafetensorError, ValueError, OSError, UnicodeDecodeError) as exc:
        raise RtlabError(f"{path} is not a readable safetensors file ({' '.join(str(exc).split())[:120]}); it may "
                         "be truncated or corrupted") from None
    return {k: v.to(device) for k, v in tensors.items()}, meta


def _embedded_meta(blob: bytes) -> dict[str, Any]:
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    raw = header.get("__metadata__", {}).get("rtlab", "{}")
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return {}


def checkpoint_paths(base: Path) -> tuple[Path, Path]:
    """(tensor file, JSON file) of the checkpoint named ``base`` (with or without a suffix)."""
    base = Path(base)
    if base.suffix in (".safetensors", ".json"):
        base = base.with_suffix("")
    return base.with_suffix(".safetensors"), base.with_suffix(".json")


def pending_paths(base: Path) -> tuple[Path, Path]:
    """Where a replacement of checkpoint ``base`` is written in full before it is renamed into place."""
    st, js = checkpoint_paths(base)
    return st.with_name(f".{st.stem}.pending.safetensors"), js.with_name(f".{js.stem}.pending.json")


def save_checkpoint(base: Path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Path:
    """Write checkpoint ``base`` (tensor file, then JSON with its hash); returns the JSON path.

    An existing checkpoint of that name stays intact until both new files are complete (see the module notes).
    """
    st, js = checkpoint_paths(base)
    pst, pjs = pending_paths(base)
    try:
        digest = save_tensors(pst, tensors, {"format": FORMAT}, sync_dir=False)
        record = {"format": FORMAT, "tensors": st.name, "sha256": digest, "meta": dict(meta)}
        atomic_write_text(pjs, json.dumps(record, indent=2, default=str), sync_dir=False)
    except BaseException:  # e.g. a full disk: the old checkpoint is untouched; no half replacement is left
        for p in (pst, pjs):
            try:
                p.unlink()
            except OSError:
                pass
        raise
    # both files are complete and on disk; a crash from here on leaves the old or the new checkpoint
    os.replace(pst, st)
    os.replace(pjs, js)
    fsync_dir(js.parent)
    return js


def resolve_checkpoint(path: Path | str) -> Path:
    """A checkpoint named by its base, either of its files, or a run folder (whose ``checkpoints/final``)."""
    path = Path(path).expanduser()
    if path.is_dir():
        final = paths.final(path)
        if checkpoint_paths(final)[1].exists():
            return final
        raise RtlabError(f"{path} is a folder without checkpoints/final; name a checkpoint such as "
                         f"{path}/checkpoints/epoch_N")
    return path


def _read_record(js: Path) -> dict[str, Any]:
    try:
        record = json.loads(js.read_text())
    except json.JSONDecodeError as exc:
        raise RtlabError(f"checkpoint metadata {js} is corrupted ({exc.msg} at line {exc.lineno}); "
                         "restore it from a backup or use an older checkpoint") from None
    except UnicodeDecodeError:
        raise RtlabError(f"checkpoint metadata {js} is corrupted (not UTF-8 text); restore it from a backup or "
                         "use an older checkpoint") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or "sha256" not in record:
        raise RtlabError(f"{js} is not an rtlab checkpoint record (format {FORMAT} with a sha256)")
    return record


def _finish_pending(base: Path) -> None:
    """Complete a replacement that was interrupted between its two renames (best effort, idempotent)."""
    st, js = checkpoint_paths(base)
    pst, pjs = pending_paths(base)
    if not pjs.exists():
        return
    try:
        record = json.loads(pjs.read_text())
    except (OSError, ValueError):
        return
    source = pst if pst.exists() else st
    try:
        complete = hashlib.sha256(source.read_bytes()).hexdigest() == record.get("sha256")
    except OSError:
        return
    if not complete:
        return
    try:
        if source is pst:
            os.replace(pst, st)
        os.replace(pjs, js)
    except OSError:  # a read-only location: the previous checkpoint is read instead
        pass


def load_checkpoint(base: Path, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of checkpoint ``base`` (or of a run folder's final checkpoint); a missing, truncated or
    altered file is refused with its name.

    A tensor file without its JSON (e.g. from another tool) is read without the hash check.
    """
    base = resolve_checkpoint(base)
    st, js = checkpoint_paths(base)
    _finish_pending(base)
    if not js.exists():
        if st.exists():
            return load_tensors(st, device)
        raise RtlabError(f"no checkpoint at {base} (expected {st.name} and {js.name})")
    record = _read_record(js)
    try:
        blob = st.read_bytes()
    except FileNotFoundError:
        raise RtlabError(f"checkpoint {js} names {st.name}, which is missing") from None
    if hashlib.sha256(blob).hexdigest() != record["sha256"]:
        raise RtlabError(f"checkpoint {st} is corrupted or truncated (its SHA-256 differs from the one in "
                         f"{js.name}); use an older checkpoint or rerun")
    tensors, _ = _parse_tensors(blob, st, device)
    return tensors, record.get("meta", {})


def verify_checkpoint(base: Path) -> dict[str, Any]:
    """The metadata of checkpoint ``base`` after checking that every file is complete (raises otherwise)."""
    _, meta = load_checkpoint(base)
    return meta


# --------------------------------------------------------------------------------------- weights from elsewhere
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def load_weights(path: str | Path, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors of a weights file from anywhere: an rtlab run folder (its final checkpoint, else its last
    training state), an rtlab checkpoint, a bare safetensors file, or a ``.pt``/``.pth``/``.bin``/``.ckpt`` file
    (only through ``torch.load(weights_only=True)``; nested dicts are flattened to dotted keys)."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in ("checkpoints/final", "checkpoints/last"):
            if checkpoint_paths(path / name)[1].exists():
                return load_checkpoint(path / name, device)
        raise RtlabError(f"{path} holds no checkpoint (checkpoints/final.json or checkpoints/last.json)")
    if path.suffix in TORCH_SUFFIXES:
        return load_torch_weights(path, device), {}
    if path.suffix in (".safetensors", ".json", ""):
        return load_checkpoint(path, device)
    raise RtlabError(f"{path}: unknown weights format '{path.suffix}'; give an rtlab run folder or checkpoint, a "
                     f".safetensors file or a {'/'.join(TORCH_SUFFIXES)} file")


def load_torch_weights(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a torch-serialised file, read with ``weights_only=True``: pickled objects that are not
    tensors, numbers, strings or containers are refused before anything executes."""

    path = Path(path)
    if not path.is_file():
        raise RtlabError(f"weights file {path} does not exist")
    try:
        with warnings.catch_warnings():  # torch's note on pickle protocols is noise here
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = " ".join(str(exc).split())
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if found:
            raise RtlabError(f"{path} holds pickled Python objects ({found.group(1)}), not only tensors; rtlab "
                             "never unpickles them (it could run code). Save the state_dict alone "
                             "(torch.save(model.state_dict(), ...)) or convert it to safetensors where you trust "
                             "the file") from None
        raise RtlabError(f"{path} is not a readable torch file (it may be truncated, corrupted or not a "
                         "weights file)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise RtlabError(f"{path} is not a readable torch file ({type(exc).__name__}); it may be truncated or "
                         "corrupted") from None
    tensors = flatten_tensors(obj)
    if not tensors:
        raise RtlabError(f"{path} holds no tensors")
    return tensors


def unwrap_state_dict(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's weights in a training script's checkpoint: the ``state_dict``/``model`` entry of
    ``{"state_dict": …, "optimizer": …}`` (timm's train.py, Lightning, most scripts), without DDP's ``module.``."""
    out = dict(tensors)
    for wrapper in ("state_dict.", "model."):
        if any(k.startswith(wrapper) for k in out):
            out = {k[len(wrapper):]: v for k, v in out.items() if k.startswith(wrapper)}
            break
    if out and all(k.startswith("module.") for k in out):
        out = {k[len("module."):]: v for k, v in out.items()}
    return out


def flatten_tensors(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors of nested dicts/lists as ``{dotted.key: tensor}`` (non-tensor leaves are dropped)."""
    out: dict[str, torch.Tensor] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix.rstrip(".")] = obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            out.update(flatten_tensors(v, f"{prefix}{k}."))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(flatten_tensors(v, f"{prefix}{i}."))
    return out


def prefixed(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v for k, v in state.items()}


def strip_prefix(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

