"""Checkpoints: complete or refused with the file's name; the old one survives an interrupted replacement;
foreign torch files are read with weights_only and a pickle payload never executes."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from framework._nets.checkpoint import (load_checkpoint, load_weights, pending_paths, save_checkpoint)
from framework._base.errors import RtlabError


def _tensors(value: float) -> dict[str, torch.Tensor]:
    return {"student.w": torch.full((64, 32), value), "student.b": torch.arange(5.0) + value}


def test_roundtrip_keeps_tensors_and_metadata(tmp_path):
    save_checkpoint(tmp_path / "ck", _tensors(1.0), {"step": 7})
    tensors, meta = load_checkpoint(tmp_path / "ck")
    assert meta == {"step": 7}
    assert all(torch.equal(tensors[k], v) for k, v in _tensors(1.0).items())


def test_truncated_tensor_file_is_refused_with_its_name(tmp_path):
    save_checkpoint(tmp_path / "ck", _tensors(1.0), {})
    st = tmp_path / "ck.safetensors"
    st.write_bytes(st.read_bytes()[:-100])
    with pytest.raises(RtlabError, match=f"checkpoint {st} is corrupted or truncated"):
        load_checkpoint(tmp_path / "ck")


def test_flipped_byte_is_refused(tmp_path):
    save_checkpoint(tmp_path / "ck", _tensors(1.0), {})
    st = tmp_path / "ck.safetensors"
    blob = bytearray(st.read_bytes())
    blob[-5] ^= 1  # inside the tensor data: safetensors itself would not notice
    st.write_bytes(bytes(blob))
    with pytest.raises(RtlabError, match="SHA-256 differs"):
        load_checkpoint(tmp_path / "ck")


def test_missing_tensor_file_and_bad_metadata(tmp_path):
    save_checkpoint(tmp_path / "ck", _tensors(1.0), {})
    (tmp_path / "ck.safetensors").unlink()
    with pytest.raises(RtlabError, match="names ck.safetensors, which is missing"):
        load_checkpoint(tmp_path / "ck")
    (tmp_path / "ck.json").write_text("{not json")
    with pytest.raises(RtlabError, match=f"checkpoint metadata {tmp_path / 'ck.json'} is corrupted"):
        load_checkpoint(tmp_path / "ck")


def test_bare_truncated_safetensors_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file(_tensors(2.0), str(path))
    assert torch.equal(load_weights(path)[0]["student.w"], _tensors(2.0)["student.w"])
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(RtlabError, match=f"{path} is not a readable safetensors file"):
        load_weights(path)


def test_old_checkpoint_survives_a_crash_before_the_switch(tmp_path, monkeypatch):
    import framework._nets.checkpoint as ck

    save_checkpoint(tmp_path / "ck", _tensors(1.0), {"v": 1})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "atomic_write_text", crash)  # the new tensor file is written, its record is not
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "ck", _tensors(2.0), {"v": 2})
    monkeypatch.undo()
    tensors, meta = load_checkpoint(tmp_path / "ck")
    assert meta == {"v": 1} and torch.equal(tensors["student.w"], _tensors(1.0)["student.w"])


def test_crash_between_the_renames_completes_the_new_checkpoint(tmp_path, monkeypatch):
    import framework._nets.checkpoint as ck

    save_checkpoint(tmp_path / "ck", _tensors(1.0), {"v": 1})
    real_replace = os.replace

    def replace_then_crash(src, dst):
        if str(dst) == str(tmp_path / "ck.json"):  # the tensor file is switched already, the JSON not yet
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(ck.os, "replace", replace_then_crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "ck", _tensors(2.0), {"v": 2})
    monkeypatch.undo()
    assert pending_paths(tmp_path / "ck")[1].exists()
    tensors, meta = load_checkpoint(tmp_path / "ck")
    assert meta == {"v": 2} and torch.equal(tensors["student.w"], _tensors(2.0)["student.w"])
    assert not pending_paths(tmp_path / "ck")[1].exists()


# ---------------------------------------------------------------------------------------------- foreign files
class Payload:
    """Unpickling this calls open(marker, "w"): code execution that must never happen."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["torch_zip", "torch_legacy", "raw_pickle"])
def test_pickle_payload_is_refused_and_never_runs(writer, tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    obj = {"weight": torch.ones(3), "payload": Payload(marker)}
    if writer == "raw_pickle":
        path.write_bytes(pickle.dumps(obj))
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=writer == "torch_zip")
    with pytest.raises(RtlabError) as info:
        load_weights(path)
    assert not marker.exists(), "unpickling executed code"
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert "never unpickles" in message or "not a readable torch file" in message


def test_plain_state_dict_file_loads(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": {"conv.weight": torch.ones(2, 2)}, "epoch": 3}, path)
    tensors, _ = load_weights(path)
    assert list(tensors) == ["state_dict.conv.weight"]


def test_checkpoint_command(tmp_path, capsys):
    from framework.cli.main import main

    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pt"
    torch.save({"payload": Payload(marker)}, evil)
    assert main(["checkpoint", str(evil)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"rtlab: error: {evil} holds pickled Python objects (")
    assert not marker.exists()

    good = tmp_path / "good.pt"
    torch.save({"encoder.weight": torch.ones(4, 3)}, good)
    assert main(["checkpoint", str(good), "--to-safetensors", str(tmp_path / "converted")]) == 0
    out = capsys.readouterr().out
    assert f"{good}: ok, 1 tensors, 12 values" in out
    tensors, meta = load_checkpoint(tmp_path / "converted")
    assert torch.equal(tensors["encoder.weight"], torch.ones(4, 3)) and meta["converted_from"] == str(good)
    assert json.loads((tmp_path / "converted.json").read_text())["sha256"]

    (tmp_path / "converted.safetensors").write_bytes(b"\0" * 16)
    assert main(["checkpoint", str(tmp_path / "converted")]) == 2
    assert "is corrupted or truncated" in capsys.readouterr().err


def test_load_network_state_names_the_differing_keys():
    from torch import nn

    from framework._nets.models import load_network_state

    small, big = nn.Sequential(nn.Linear(4, 8)), nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    tensors = {f"student.{k}": v for k, v in big.state_dict().items()}
    with pytest.raises(RtlabError) as info:
        load_network_state(small, tensors, "student.", "run/checkpoints/final.json")
    message = str(info.value)
    assert "checkpoint run/checkpoints/final.json is of another architecture" in message
    assert "2 shape(s) differ, e.g. 0.bias: (16,) in the checkpoint vs (8,) here" in message
    assert "2 unexpected key(s), e.g. 2.bias" in message
