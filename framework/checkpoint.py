"""Checkpoints: safetensors for tensors, JSON for metadata, written atomically; nothing is ever unpickled.

A checkpoint ``NAME`` is two files: ``NAME.safetensors`` and ``NAME.json``. The JSON holds the metadata and the
SHA-256 of the tensor file, and is written last, so a checkpoint whose JSON exists is complete; a truncated or
altered tensor file fails the hash check with the file's name.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from framework.errors import RtlabError

FORMAT = "rtlab-checkpoint/1"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


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


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None) -> str:
    """Atomically write ``tensors`` to ``path`` (a .safetensors file); returns its SHA-256."""
    from safetensors.torch import save

    blob = save(_prepare(tensors), metadata={"rtlab": json.dumps(dict(meta or {}), default=str)})
    atomic_write_bytes(Path(path), blob)
    return hashlib.sha256(blob).hexdigest()


def load_tensors(path: Path, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and the embedded metadata of a .safetensors file; a broken file raises :class:`RtlabError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    try:
        blob = path.read_bytes()
        tensors = load(blob)
    except FileNotFoundError:
        raise RtlabError(f"checkpoint file {path} does not exist") from None
    except (SafetensorError, ValueError, OSError) as exc:
        raise RtlabError(f"{path} is not a readable safetensors file ({exc}); it may be truncated or "
                         "corrupted") from None
    meta = _embedded_meta(blob)
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


def save_checkpoint(base: Path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Path:
    """Write checkpoint ``base`` (tensor file first, then JSON with its hash); returns the JSON path.

    The previous checkpoint of that name stays readable until both new files are in place.
    """
    st, js = checkpoint_paths(base)
    digest = save_tensors(st, tensors, {"format": FORMAT})
    record = {"format": FORMAT, "tensors": st.name, "sha256": digest, "meta": dict(meta)}
    atomic_write_text(js, json.dumps(record, indent=2, default=str))
    return js


def resolve_checkpoint(path: Path | str) -> Path:
    """A checkpoint named by its base, either of its files, or a run folder (whose ``checkpoints/final``)."""
    path = Path(path).expanduser()
    if path.is_dir():
        final = path / "checkpoints" / "final"
        if checkpoint_paths(final)[1].exists():
            return final
        raise RtlabError(f"{path} is a folder without checkpoints/final; name a checkpoint such as "
                         f"{path}/checkpoints/epoch_N")
    return path


def load_checkpoint(base: Path, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of checkpoint ``base`` (or of a run folder's final checkpoint); refuses files whose hash
    does not match, with the name."""
    st, js = checkpoint_paths(resolve_checkpoint(base))
    if not js.exists():
        if st.exists():
            tensors, meta = load_tensors(st, device)
            return tensors, meta
        raise RtlabError(f"no checkpoint at {base} (expected {st.name} and {js.name})")
    try:
        record = json.loads(js.read_text())
    except json.JSONDecodeError as exc:
        raise RtlabError(f"checkpoint metadata {js} is corrupted ({exc.msg})") from None
    try:
        blob = st.read_bytes()
    except FileNotFoundError:
        raise RtlabError(f"checkpoint {js.name} names {st.name}, which is missing") from None
    if hashlib.sha256(blob).hexdigest() != record.get("sha256"):
        raise RtlabError(f"checkpoint {st} is corrupted or truncated (SHA-256 differs from {js.name})")
    tensors, _ = load_tensors(st, device)
    return tensors, record.get("meta", {})


def prefixed(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v for k, v in state.items()}


def strip_prefix(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

