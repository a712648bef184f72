"""Every experiment preset composes and trains for two steps on tiny offline data; the paper's preset is the
paper's setting field by field."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from framework._config.compose import config_dir
from tiny_runs import FAST, compose_run

# the distillation presets: one per paper table and figure (the analyses' presets are run by their own tests)
PAPER_PRESETS = ["paper_cifar10_resnet18", "paper_cifar10_vgg11", "paper_table1", "paper_table2_transfer",
                 "paper_table3_knn", "paper_table5_architectures", "paper_fig3_locality", "paper_fig3_cpu",
                 "paper_fig4_datasize", "paper_fig4_cpu", "paper_fig10_outdim", "paper_fig11_norm",
                 "paper_fig12_bottleneck", "paper_fig18_restart", "paper_dino_cifar10", "cifar10_cpu",
                 "cifar10_cpu_gaussian"]
PRESETS = ["default", *PAPER_PRESETS]
# two steps, one cheap evaluation, on the digits instead of each preset's dataset
SMOKE = [*FAST, "train.max_steps=2", "evaluator=[knn]", "eval.targets=[student]", "eval.datasets=[]",
         "eval.train_data=true"]


@pytest.fixture(scope="module")
def round1(tmp_path_factory):
    """A finished tiny paper run with a final checkpoint (round 1 of the restart preset)."""
    out = tmp_path_factory.mktemp("round1")
    compose_run(out, "experiment=paper_cifar10_resnet18", *SMOKE, "checkpoint.final=true", base=[]).fit()
    return out


def test_every_paper_result_has_a_preset():
    shipped = {p.stem for p in (config_dir() / "experiment").glob("*.yaml")}
    assert set(PAPER_PRESETS) <= shipped
    for name in PAPER_PRESETS:  # the header names the paper result it targets
        header = (config_dir() / "experiment" / f"{name}.yaml").read_text().split("\n", 3)[:3]
        assert "docs/paper.md" in " ".join(header) or "DINO" in " ".join(header), name


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_trains_two_steps(preset, tmp_path, round1):
    extra = [f"teacher.path={round1}"] if preset == "paper_fig18_restart" else []
    run = compose_run(tmp_path, f"experiment={preset}", *SMOKE, *extra, base=[])
    summary = run.fit()
    assert summary["steps"] == 2
    assert 0.0 <= summary["metrics"]["knn/student"] <= 1.0
    assert summary["student_distance_from_init"] > 0.0
    assert (tmp_path / "summary.json").exists()
    if preset == "paper_fig18_restart":
        assert summary["restart_round"] == 2


def test_paper_preset_is_the_papers_setting():
    """docs/paper.md#protocol, field by field."""
    from framework._config.compose import compose

    cfg = OmegaConf.to_container(compose(["experiment=paper_cifar10_resnet18"]), resolve=True)
    assert cfg["backbone"]["name"] == "resnet18" and cfg["backbone"]["stem"] == "cifar"
    assert cfg["backbone"]["init"] == "paper" and cfg["backbone"]["norm"] is None
    head = cfg["head"]
    assert head["name"] == "dino" and head["layout"] is None
    assert head["hidden_dims"] == [2048, 2048] and head["bottleneck_dim"] == 256 and head["out_dim"] == 65536
    assert head["activation"] == "gelu" and head["batchnorm"] is False
    assert head["feature_norm"] is True and head["weight_norm"] is False  # published runs: no effective wn
    assert head["bottleneck_bias"] is True and head["last_bias"] is False
    assert head["bottleneck_weight_norm"] is False and head["output_norm"] is False
    assert cfg["loss"] == {"name": "ce", "teacher_temp": 1.0, "student_temp": 1.0, "teacher_temp_start": None,
                           "teacher_temp_warmup_epochs": 0.0}
    assert cfg["objective"] == {"name": "distillation", "pairing": "same", "center_momentum": None,
                                "cache_teacher": True}  # exact: the same losses as without the cache
    assert cfg["teacher"]["name"] == "random"
    assert cfg["updater"] == {"name": "frozen", "bn_mode": "eval"}
    assert cfg["student"] == {"name": "interpolated", "alpha": 1e-10, "seed": 1, "variance_preserving": True}
    opt = cfg["optimizer"]
    assert opt["name"] == "adamw" and opt["lr"] == 1e-3 and opt["weight_decay"] == 0.0
    assert list(opt["betas"]) == [0.9, 0.999] and opt["eps"] == 1e-8 and opt["schedule"] == "constant"
    assert opt["warmup_epochs"] == 0 and opt["final_weight_decay"] is None
    assert opt["clip_grad"] == 0.0 and opt["freeze_last_layer_epochs"] == 0
    assert cfg["augment"] == {"name": "identity"}
    assert cfg["train"]["batch_size"] == 256 and cfg["train"]["drop_last"] is False
    assert cfg["train"]["epochs"] == 150 and cfg["train"]["sample_budget"] is None
    data = cfg["data"]
    assert data["name"] == "hf" and data["path"] == "uoft-cs/cifar10" and data["classes"] == 10
    assert data["mean"] == [0.4914, 0.4822, 0.4465] and data["std"] == [0.247, 0.243, 0.261]
    assert data["train_size"] is None and data["image_size"] is None
    assert set(cfg["evaluator"]) == {"knn", "linear"}
    assert cfg["evaluator"]["knn"]["k"] == 20 and cfg["evaluator"]["knn"]["metric"] == "l2"
    assert cfg["evaluator"]["linear"]["epochs"] == 10 and cfg["evaluator"]["linear"]["weight_decay"] == 0.01


def test_sweep_presets_name_their_sweeps():
    """Multirun presets carry their sweep, so `rtlab train -m experiment=NAME` is the whole study."""
    for name in ("paper_table1", "paper_fig3_cpu", "paper_fig4_cpu", "paper_fig12_bottleneck"):
        raw = OmegaConf.load(config_dir() / "experiment" / f"{name}.yaml")
        assert raw.hydra.sweeper.params, name
    fig3 = OmegaConf.load(config_dir() / "experiment" / "paper_fig3_cpu.yaml").hydra.sweeper.params
    assert "1.0" in fig3["student.alpha"] and "0.0" in fig3["student.alpha"]
    assert json.dumps(fig3["train.seed"]).count(",") >= 2  # >= 3 seeds


def test_train_seed_seeds_teacher_and_student_of_a_sweep():
    from framework._config.compose import compose

    seeds = []
    for seed in (0, 1):
        cfg = compose(["experiment=paper_fig3_cpu", f"train.seed={seed}"])
        seeds.append((int(cfg.teacher.seed), int(cfg.student.seed)))
    assert len({s for pair in seeds for s in pair}) == 4  # four distinct streams
