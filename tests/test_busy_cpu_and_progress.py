"""A default job that survives a busy CPU: fewer threads when the cores are taken, and a progress bar that says
what it is doing (probes running) and leads with the number that moves (the KL, not the constant-laden CE)."""

from __future__ import annotations

import logging

import torch

from framework import hookimpl
from framework._nets.device import safe_cpu_threads
from plugins.tracking import progress


def test_threads_shrink_to_the_free_cores_of_a_busy_cpu():
    assert safe_cpu_threads(2, cores=2, load=9.2) == 1  # the 98-minute default job: 2 threads on 2 busy cores
    assert safe_cpu_threads(2, cores=2, load=2.0) == 1  # one core taken by other work
    assert safe_cpu_threads(16, cores=16, load=5.0) == 12
    assert safe_cpu_threads(2, cores=2, load=0.9) is None  # idle but for this process: torch's default stays
    assert safe_cpu_threads(1, cores=2, load=9.0) is None


def test_setup_on_a_busy_cpu_trains_with_one_thread_and_says_so(tmp_path, monkeypatch, caplog):
    from tests.tiny_runs import compose_run

    monkeypatch.setattr("framework._run.build.cpu_load", lambda: (2, 9.2))
    monkeypatch.delenv("RTLAB_KEEP_THREADS", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with caplog.at_level(logging.WARNING, logger="rtlab"):
            run = compose_run(tmp_path / "busy")
        run.release()
        assert torch.get_num_threads() == 1 and run.summary["cpu_threads"] == 1
        assert "the CPU is busy (load average 9.2 on 2 cores): training with 1 thread(s) instead of 2" in caplog.text
        torch.set_num_threads(2)
        run = compose_run(tmp_path / "chosen", "train.threads=2")  # an explicit setting is left alone
        run.release()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_the_bar_leads_with_the_kl_and_shows_loss_after_it():
    post = progress.postfix({"train/loss": 8.31777, "train/kl": 0.000123456, "epoch": 1.5, "step": 3})
    assert list(post) == ["kl", "loss", "epoch"] and post["kl"] == "0.0001235" and post["loss"] == "8.318"
    assert list(progress.postfix({"train/loss": 0.5, "epoch": 1.0})) == ["loss", "epoch"]


class _Peek:
    """An evaluator that records what the progress bar says while the probes run."""

    seen: list = []

    def __init__(self, opts):
        pass

    def evaluate(self, features, run):
        self.seen.append(progress._bars[id(run)].desc.rstrip(": "))
        return {}


class _PeekPlugin:
    @hookimpl
    def rtlab_register(self, registry):
        registry.add("evaluator", "peek", _Peek)


def test_the_bar_says_evaluating_while_the_probes_run(tmp_path):
    from framework._config.compose import check_config, compose
    from framework._contract.plugin_manager import create_plugin_manager
    from framework._run.loop import Run
    from tests.tiny_runs import FAST

    pm = create_plugin_manager(extra_plugins=[_PeekPlugin()], autoload=False)
    cfg = compose([*FAST, "progress.enabled=true", "eval.before=true", "evaluator=[peek]", "eval.targets=[student]"],
                  pm.registry)
    check_config(cfg, pm.registry)
    _Peek.seen.clear()
    run = Run(cfg, tmp_path, pm).setup()
    bar_descs = []
    pm.register(type("After", (), {"rtlab_step_end": hookimpl(
        lambda self, run: bar_descs.append(progress._bars[id(run)].desc.rstrip(": ")))})(), name="after")
    run.fit()
    assert _Peek.seen[:2] == ["evaluating… (epoch 0)", "evaluating… (epoch 1)"]
    assert bar_descs and all(d == "train" for d in bar_descs)  # back to "train" once the probes are done
