"""``rtlab probe``: networks rtlab did not train, evaluated under rtlab's protocol — a backbone saved with lightly's
own code gives exactly the numbers the same weights got inside rtlab; solo-learn's and DDP's wrappers are found;
an export folder names its own backbone; ``teacher.path`` reads the same sources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from tiny_runs import FAST, compose_run, plugin_manager

PROBE = [o for o in FAST if not o.startswith("train.epochs")]  # the probe trains nothing

# a torchvision-layout ResNet-18 on 3-channel digits, so lightly's example model can hold its weights
RUN = ["backbone=resnet18", "backbone.stem=timm", "data.channels=3", "checkpoint.final=true",
       "evaluator.linear.epochs=3"]


def _student_encoder(run: Path):
    from framework.api import network_from_checkpoint

    net, _ = network_from_checkpoint(plugin_manager().registry, run / "checkpoints" / "final", "student")
    return net.encoder.eval()


def _lightly_simclr(encoder) -> nn.Module:
    """lightly's SimCLR example model (torchvision ResNet-18 children as the backbone, lightly's projection head)
    holding ``encoder``'s weights."""
    import torchvision
    from lightly.models.modules import SimCLRProjectionHead

    resnet = torchvision.models.resnet18()
    missing, unexpected = resnet.load_state_dict(encoder.state_dict(), strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected

    class SimCLR(nn.Module):
        def __init__(self, backbone):
            super().__init__()
            self.backbone = backbone
            self.projection_head = SimCLRProjectionHead(512, 512, 128)

        def forward(self, x):
            return self.projection_head(self.backbone(x).flatten(start_dim=1))

    return SimCLR(nn.Sequential(*list(resnet.children())[:-1])).eval()


def test_a_backbone_saved_by_lightly_gets_the_numbers_rtlab_gave_it(tmp_path):
    from framework.cli import main

    run = tmp_path / "run"
    compose_run(run, *RUN).fit()
    encoder = _student_encoder(run)
    model = _lightly_simclr(encoder)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the same network: lightly's backbone gives rtlab's embedding
        assert torch.allclose(model.backbone(x).flatten(1), encoder(x), atol=1e-5)
    torch.save(model.state_dict(), tmp_path / "lightly_simclr.pt")  # keys backbone.0.weight, …, projection_head.…

    probe = tmp_path / "probe"
    assert main(["probe", str(tmp_path / "lightly_simclr.pt"), *PROBE, *RUN, f"hydra.run.dir={probe}"]) == 0
    want = json.loads((run / "summary.json").read_text())["metrics"]
    got = json.loads((probe / "summary.json").read_text())["metrics"]
    for key in ("knn/student", "linear/student", "linear_std/student", "knn/input"):
        assert got[key] == want[key], key
    assert "knn/teacher" not in got  # the probe's targets: the network (as the student) and the pixels
    config = (probe / "config.yaml").read_text()
    assert "epochs: 0" in config and "encoder_only: true" in config


def test_wrappers_of_other_libraries_are_found(tmp_path):
    """solo-learn's Lightning checkpoint (``state_dict.backbone.*`` beside ``momentum_backbone.*`` and a projector),
    DDP's ``module.``, and a bare ``nn.Sequential`` all load into the backbone they hold."""
    from framework.api import load_network_checkpoint

    src = compose_run(tmp_path / "src", "backbone.stem=timm").student.encoder
    state = src.state_dict()
    noise = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in state.items()}
    cases = {
        "solo.ckpt": {"state_dict": {**{f"backbone.{k}": v for k, v in state.items()},
                                     **{f"momentum_backbone.{k}": v for k, v in noise.items()},
                                     "projector.0.weight": torch.zeros(8, 8)}, "epoch": 3},
        "ddp.pth": {f"module.{k}": v for k, v in state.items()},
        "sequential.pt": {f"{i}.{k.split('.', 1)[1]}": v for i, (k, v) in enumerate(state.items())},
    }
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
        run = compose_run(tmp_path / name.split(".")[0], "backbone.stem=timm")
        load_network_checkpoint(run.teacher, tmp_path / name, encoder_only=True)
        got = run.teacher.encoder.state_dict()
        assert all(torch.equal(got[k], state[k]) for k in state if not k.endswith("num_batches_tracked")), name
    # weights of another architecture: refused with the keys and shapes that differ
    torch.save({"conv.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    from framework.api import RtlabError

    with pytest.raises(RtlabError, match="is of another architecture"):
        load_network_checkpoint(compose_run(tmp_path / "o").teacher, tmp_path / "other.pt", encoder_only=True)


def test_an_export_folder_probes_and_teaches_with_its_own_backbone(tmp_path):
    from framework.cli import main
    from plugins.commands.export import export
    from plugins.commands.probe import probe_overrides

    run = tmp_path / "run"
    compose_run(run, "backbone.stem=cifar", "checkpoint.final=true").fit()
    folder = export(str(run))
    overrides = probe_overrides(str(folder), "student", [])
    assert "backbone=test_resnet" in overrides and "backbone.stem=cifar" in overrides
    probe = tmp_path / "probe"
    assert main(["probe", str(folder), *PROBE, f"hydra.run.dir={probe}"]) == 0
    want = json.loads((run / "summary.json").read_text())["metrics"]
    assert json.loads((probe / "summary.json").read_text())["metrics"]["knn/student"] == want["knn/student"]
    # the same folder as the teacher of a new run (distil from any model)
    taught = compose_run(tmp_path / "taught", "teacher=checkpoint", f"teacher.path={folder}",
                         "teacher.encoder_only=true", "backbone.stem=cifar")
    assert all(torch.equal(a, b) for a, b in zip(taught.teacher.encoder.state_dict().values(),
                                                  _student_encoder(run).state_dict().values()))


def test_a_missing_source_is_one_line(tmp_path):
    from framework.api import RtlabError
    from plugins.commands.probe import probe_overrides

    with pytest.raises(RtlabError, match="does not exist; give a model folder"):
        probe_overrides(str(tmp_path / "nope.pt"), "student", [])
    (tmp_path / "w.pt").write_bytes(b"")
    with pytest.raises(RtlabError, match="rtlab probe evaluates SOURCE without training and sets train.epochs itself"):
        probe_overrides(str(tmp_path / "w.pt"), "student", ["train.epochs=3"])
