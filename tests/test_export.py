"""``rtlab export``: timm loads the exported network and gives the embeddings rtlab computes — for a backbone timm
rebuilds by name (also in a Python without rtlab), one whose small-input stem rtlab adapted (``rtlab_backbone``), a
ViT whose patch size rtlab chose, and the paper's CIFAR nets; the model card holds the numbers; pushing is refused
offline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from tiny_runs import compose_run

FINAL = ["checkpoint.final=true"]


def _train(folder: Path, *overrides: str) -> Path:
    compose_run(folder, *FINAL, *overrides).fit()
    return folder


def _rtlab_embedding(run: Path, part: str = "student", checkpoint: str = "final") -> tuple[torch.Tensor, torch.Tensor]:
    """(images, rtlab's embeddings of them): the run's normalised test images through its network."""
    from framework.api import network_from_checkpoint
    from tiny_runs import plugin_manager

    net, meta = network_from_checkpoint(plugin_manager().registry, run / "checkpoints" / checkpoint, part)
    x = torch.randn(8, meta["data"]["channels"], *meta["data"]["size"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return x, net.eval().embed(x)


def _timm_embedding(folder: Path, x: torch.Tensor) -> torch.Tensor:
    """The export as timm builds it by name from config.json, with its weights file as the pretrained source."""
    import importlib

    import timm

    config = json.loads((folder / "config.json").read_text())
    if config["rtlab"]["needs"]:
        importlib.import_module(config["rtlab"]["needs"])
    model = timm.create_model(config["architecture"], pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(folder / "model.safetensors")),
                              **config["model_args"])
    with torch.no_grad():
        return model.eval()(x)


def test_a_backbone_timm_knows_loads_in_timm_alone(tmp_path):
    from plugins.commands.export import export

    run = _train(tmp_path / "run", "backbone.stem=timm")
    folder = export(str(run))
    assert folder == run / "export" / "student"
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "test_resnet" and config["rtlab"]["needs"] is None
    assert config["model_args"]["in_chans"] == 1 and config["pretrained_cfg"]["input_size"] == [1, 8, 8]
    x, want = _rtlab_embedding(run)
    assert torch.allclose(_timm_embedding(folder, x), want, atol=1e-5)
    # a Python with timm and no rtlab on its path loads the folder
    code = ("import sys, timm, torch; m = timm.create_model('local-dir:' + sys.argv[1], pretrained=True).eval();"
            "x = torch.load(sys.argv[2]); torch.save(m(x).detach(), sys.argv[3])")
    torch.save(x, tmp_path / "x.pt")
    res = subprocess.run([sys.executable, "-c", code, str(folder), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert torch.allclose(torch.load(tmp_path / "y.pt"), want, atol=1e-5)
    # the model card: method, data, protocol, the numbers with intervals and the gains over the controls
    card = (folder / "README.md").read_text()
    summary = json.loads((run / "summary.json").read_text())
    knn = summary["metrics"]["knn/student"]
    assert f"| student | knn | {100 * knn:.2f}% |" in card
    assert "## Method" in card and "## Data" in card and "## Evaluation protocol" in card
    assert "student − teacher (BN control)" in card
    assert "library_name: timm" in card


def test_an_adapted_stem_exports_as_rtlab_backbone(tmp_path):
    from plugins.commands.export import export

    run = _train(tmp_path / "run", "backbone.stem=cifar")
    folder = export(str(run))
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "rtlab_backbone"
    assert config["model_args"]["backbone"]["stem"] == "cifar"
    assert config["rtlab"]["needs"] == "plugins.networks.adapted"
    x, want = _rtlab_embedding(run)
    assert torch.allclose(_timm_embedding(folder, x), want, atol=1e-5)
    assert "import plugins.networks.adapted" in (folder / "README.md").read_text()


def test_teacher_of_an_epoch_checkpoint_and_a_vit_with_an_adapted_patch_size(tmp_path):
    from plugins.commands.export import export

    run = _train(tmp_path / "run", "backbone=test_vit", "train.epochs=2", "checkpoint.epochs=[1]")
    folder = export(str(run), part="teacher", checkpoint="epoch_1")
    assert folder == run / "export" / "teacher-epoch_1"
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "test_vit" and config["rtlab"]["needs"] is None
    assert config["model_args"]["patch_size"] == 2 and list(config["model_args"]["img_size"]) == [8, 8]
    x, want = _rtlab_embedding(run, "teacher", "epoch_1")
    assert torch.allclose(_timm_embedding(folder, x), want, atol=1e-5)
    card = (folder / "README.md").read_text()
    assert "# default: the teacher of an rtlab run" in card
    assert "No evaluation of these weights was recorded" in card  # epoch 1 was not evaluated (eval.every=0)


def test_the_papers_cifar_nets_need_their_plugin(tmp_path):
    from plugins.commands.export import export

    run = _train(tmp_path / "run", "backbone=cifar_resnet20")
    folder = export(str(run))
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "cifar_resnet20"
    assert config["rtlab"]["needs"] == "plugins.networks.cifar_nets"
    x, want = _rtlab_embedding(run)
    assert torch.allclose(_timm_embedding(folder, x), want, atol=1e-5)


def test_push_to_hub_is_refused_offline_and_writes_nothing(tmp_path):
    res = run_cli("export", str(tmp_path), "--push-to-hub", "me/model", env={"HF_HUB_OFFLINE": "1"})
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == (
        "rtlab: error: --push-to-hub me/model needs the Hugging Face Hub, but HF_HUB_OFFLINE is set; export without "
        "--push-to-hub and upload the folder later (huggingface-cli upload)")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_without_checkpoints_is_one_line(tmp_path):
    from framework.api import RtlabError
    from plugins.commands.export import export

    with pytest.raises(RtlabError, match="has no checkpoint final or last"):
        export(str(tmp_path))
