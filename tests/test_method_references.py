"""Every method's loss checked against an implementation rtlab's developers did not write: lightly's (a test-only
dependency, ``pip install -e .[dev]``) on identical float64 inputs — values and gradients equal to float tolerance,
or the difference stated with the paper's equation — and, for a method lightly lacks or implements differently,
a hand computation of the paper's pseudo-code.

The objectives run as in training (the method preset composed and built through the registry, ``loss(run, views,
index)`` called), on a stand-in run whose networks are fixed maps of the "views": the student passes its input
through (so the views *are* the student's embeddings and their gradients are the loss's), the teacher is a fixed
random linear map, predictors are replaced by fixed random linear maps. docs/methods.md lists the conventions.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tiny_runs import plugin_manager

lightly_loss = pytest.importorskip("lightly.loss", reason="lightly is a test dependency: pip install -e .[dev]")

torch.set_default_dtype(torch.float32)
D = 6  # embedding width
N = 8  # images per batch
TOL = dict(rtol=1e-10, atol=1e-12)


class Net(nn.Module):
    """A stand-in network: the encoder passes its input through, the head is ``head`` (identity by default)."""

    def __init__(self, head: nn.Module | None = None, dim: int = D) -> None:
        super().__init__()
        self.encoder = nn.Identity()
        self.head = head if head is not None else nn.Identity()
        if head is None:
            self.head.out_dim = dim
        self.embed_dim = dim

    def forward(self, x):
        return self.head(self.encoder(x))


def linear(seed: int, dim: int = D) -> nn.Module:
    """A fixed random linear map in float64 (no gradients)."""
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(dim, dim, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(dim, dim, generator=g, dtype=torch.float64) / math.sqrt(dim))
        layer.bias.copy_(torch.randn(dim, generator=g, dtype=torch.float64) * 0.1)
    return layer.requires_grad_(False)


def built(method: str, *overrides: str, student: nn.Module | None = None, global_views: int = 2):
    """(objective, stand-in run) for ``method=NAME`` with ``overrides``, set up as a run would."""
    pm = plugin_manager()
    from framework._config.compose import compose

    cfg = compose([f"method={method}", "train.seed=7", *overrides], pm.registry)
    run = SimpleNamespace(cfg=cfg, student=student or Net(), teacher=Net(linear(99)), device=torch.device("cpu"),
                          dtype=torch.float64, augment=SimpleNamespace(global_views=global_views),
                          step=0, steps_per_epoch=10, epoch=0, logging_step=True, summary={},
                          place=lambda m: m.to(torch.float64), world_size=1)
    run.loss_fn = pm.registry.build("loss", cfg.loss) if cfg.get("loss") is not None else None
    objective = pm.registry.build("objective", cfg.objective)
    objective.setup(run)
    if getattr(objective, "predictor", None) is not None:
        objective.predictor = linear(5)
    return objective, run


def views(n_views: int = 2, seed: int = 0, n: int = N, dim: int = D) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, dim, generator=g, dtype=torch.float64).requires_grad_() for _ in range(n_views)]


def ours(objective, run, vs):
    """rtlab's loss and its gradients with respect to the views."""
    loss = objective.loss(run, vs, torch.arange(len(vs[0])))[0]
    return loss.detach(), torch.autograd.grad(loss, vs, allow_unused=True, materialize_grads=True)


def theirs(fn, vs):
    """A reference loss of fresh copies of the views, and its gradients with respect to them."""
    copies = [v.detach().clone().requires_grad_() for v in vs]
    loss = fn(*copies)
    return loss.detach(), torch.autograd.grad(loss, copies, allow_unused=True, materialize_grads=True)


def assert_same(a, b, scale: float = 1.0, offset: float = 0.0):
    """rtlab's (loss, grads) ``a`` equal ``offset + scale ×`` the reference's ``b`` (gradients: ``scale ×``)."""
    torch.testing.assert_close(a[0], offset + scale * b[0], **TOL)
    for ga, gb in zip(a[1], b[1]):
        torch.testing.assert_close(ga, scale * gb, **TOL)


# ---------------------------------------------------------------------------------------------- the existing six
def test_random_teacher_is_the_cross_entropy_at_temperature_one():
    """lightly's DINOLoss skips the teacher-view = student-view terms the paper's loss consists of: by hand,
    H(softmax(t), softmax(s)) = −Σ softmax(t)·log softmax(s), averaged over the batch (PAPER.md §2.1's loss)."""
    objective, run = built("random_teacher", "objective.cache_teacher=false")
    run.augment = SimpleNamespace(global_views=None)
    vs = views(1)
    t = run.teacher(vs[0]).detach()
    expected = theirs(lambda s: -(F.softmax(t, 1) * F.log_softmax(s, 1)).sum(1).mean(), vs)
    assert_same(ours(objective, run, vs), expected)


def test_dino_equals_lightly_with_the_same_teacher_temperature():
    """Multi-crop (2 global + 2 local crops), centring over two steps, sharpening: lightly's DINOLoss given the
    teacher temperature rtlab's per-step warm-up has reached. (lightly turns τ_t into a float32 tensor: the warm-up
    here runs between binary fractions, 1/16 → 1/8, so that both sides divide by the same number.)"""
    from plugins.distill.losses import teacher_temperature

    objective, run = built("dino", "objective.cache_teacher=false", "loss.teacher_temp_start=0.0625",
                           "loss.teacher_temp=0.125", "loss.teacher_temp_warmup_epochs=1")
    run.steps_per_epoch = 8
    ref = lightly_loss.DINOLoss(output_dim=D, student_temp=0.1, center_momentum=0.9).double()
    for step in (0, 4):
        run.step = step
        vs = views(4, seed=step)
        tau = teacher_temperature(run.loss_fn.opts, step / run.steps_per_epoch)
        assert tau == (0.0625, 0.09375)[step // 4]
        teacher = [run.teacher(v).detach() for v in vs[:2]]
        assert_same(ours(objective, run, vs), theirs(lambda *s: ref(teacher, list(s), teacher_temp=tau), vs))
    torch.testing.assert_close(objective.centering.center, ref.center.view(-1), **TOL)


def test_dino_teacher_temperature_warms_up_per_step_within_0_001_of_the_per_epoch_schedule():
    """rtlab raises τ_t every step (linear in the fractional epoch, 0.04 → 0.07 over 30 epochs, reached at epoch
    30); DINO's code and lightly hold one value per epoch (0.07 reached at epoch 29): at most 0.001 apart."""
    from plugins.distill.losses import TemperatureOptions, teacher_temperature

    opts = TemperatureOptions(teacher_temp=0.07, student_temp=0.1, teacher_temp_start=0.04,
                              teacher_temp_warmup_epochs=30)
    ref = lightly_loss.DINOLoss(warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=30)
    worst = 0.0
    for epoch in range(40):
        official = float(ref.teacher_temp_schedule[epoch]) if epoch < 30 else 0.07
        for frac in (0.0, 0.5, 0.999):
            worst = max(worst, abs(teacher_temperature(opts, epoch + frac) - official))
    assert 0.0009 < worst <= 0.001 + 1e-9


def test_byol_is_four_plus_four_times_lightlys_example_loss():
    """BYOL's paper writes the symmetrised loss L + L̃ with L = ‖p̄ − z̄‖² = 2 − 2·cos(p, z) (Eq. 2); lightly's
    example minimises ½(−cos(p₁, z₂) − cos(p₂, z₁)). So rtlab's loss is 4 + 4 × lightly's, and its gradients 4×
    larger (which matters under SGD or LARS, not under Adam)."""
    objective, run = built("byol")
    vs = views(2)
    crit = lightly_loss.NegativeCosineSimilarity()

    def reference(a, b):
        p, z = [objective.predictor(a), objective.predictor(b)], [run.teacher(a).detach(), run.teacher(b).detach()]
        return 0.5 * (crit(p[0], z[1]) + crit(p[1], z[0]))

    assert_same(ours(objective, run, vs), theirs(reference, vs), scale=4.0, offset=4.0)


def test_simsiam_equals_lightlys_negative_cosine_with_stopped_gradients():
    objective, run = built("simsiam")
    vs = views(2)
    crit = lightly_loss.NegativeCosineSimilarity()

    def reference(a, b):
        p = [objective.predictor(a), objective.predictor(b)]
        return 0.5 * (crit(p[0], b.detach()) + crit(p[1], a.detach()))

    assert_same(ours(objective, run, vs), theirs(reference, vs))


@pytest.mark.parametrize("method, reference", [
    ("simclr", lambda: lightly_loss.NTXentLoss(temperature=0.5)),
    ("barlow_twins", lambda: lightly_loss.BarlowTwinsLoss(lambda_param=5e-3)),
    ("vicreg", lambda: lightly_loss.VICRegLoss()),
    ("dcl", lambda: lightly_loss.DCLLoss(temperature=0.1)),
    ("dclw", lambda: lightly_loss.DCLWLoss(temperature=0.1, sigma=0.5)),
])
def test_two_view_losses_equal_lightly(method, reference):
    objective, run = built(method)
    vs = views(2)
    assert_same(ours(objective, run, vs), theirs(reference(), vs))


# ---------------------------------------------------------------------------------------------- the new methods
def test_moco_v2_equals_lightlys_ntxent_with_a_memory_bank():
    """Four steps with a queue of 12 keys and batches of 4: the loss, its gradients and the queue (lightly's bank
    after its update) agree, including the wrap-around of the ring."""
    objective, run = built("moco_v2", "objective.queue_size=12")
    ref = lightly_loss.NTXentLoss(temperature=0.2, memory_bank_size=(12, D)).double()
    ref.memory_bank.bank = objective.queue.rows.clone()
    for step in range(4):
        vs = views(2, seed=step, n=4)
        key = run.teacher(vs[1]).detach()
        expected = theirs(lambda q, _: ref(q, key), vs)
        got = ours(objective, run, vs)
        torch.testing.assert_close(got[0], expected[0], **TOL)
        torch.testing.assert_close(got[1][0], expected[1][0], **TOL)
        assert not got[1][1].any()  # no gradient through the key encoder's view
        torch.testing.assert_close(objective.queue.rows, ref.memory_bank.bank, **TOL)
    assert int(objective.queue.ptr) == int(ref.memory_bank.bank_ptr) == 4


def test_moco_v3_equals_the_papers_algorithm_1():
    """lightly has no MoCo v3 loss; Algorithm 1 of the paper, written out: ctr(q, k) = 2τ · CE(q·kᵀ/τ, labels
    0…N−1) with q and k L2-normalised, loss = ctr(q₁, k₂) + ctr(q₂, k₁)."""
    objective, run = built("moco_v3", "objective.temperature=0.2")
    vs = views(2)
    tau = 0.2

    def ctr(q, k):
        q, k = q / q.norm(dim=1, keepdim=True), k / k.norm(dim=1, keepdim=True)
        logits = q @ k.T / tau
        ce = torch.stack([torch.logsumexp(logits[i], 0) - logits[i, i] for i in range(len(q))]).mean()
        return 2 * tau * ce

    def reference(a, b):
        q1, q2 = objective.predictor(a), objective.predictor(b)
        k1, k2 = run.teacher(a).detach(), run.teacher(b).detach()
        return ctr(q1, k2) + ctr(q2, k1)

    assert_same(ours(objective, run, vs), theirs(reference, vs))


def test_nnclr_equals_the_papers_equation_with_lightlys_support_set():
    """The neighbours come from lightly's NNMemoryBankModule holding the same support set; the loss is NNCLR's
    Eq. 2 by hand (lightly's example uses SimCLR's NT-Xent instead, whose denominator also holds the same view's
    other embeddings): −log exp(NN(zᵢ)·p̄ᵢ⁺/τ) / Σₖ exp(NN(zᵢ)·p̄ₖ⁺/τ), symmetrised. Two steps: the support set
    receives the first view's normalised projections, as lightly's bank does."""
    from lightly.models.modules import NNMemoryBankModule

    objective, run = built("nnclr", "objective.support_size=16")
    bank = NNMemoryBankModule(size=(16, D)).double()
    bank.bank = objective.support.rows.clone()
    tau = 0.1
    for step in range(2):
        vs = views(2, seed=step)
        with torch.no_grad():
            nn0 = bank(F.normalize(vs[0], dim=1), update=False)
            nn1 = bank(F.normalize(vs[1], dim=1), update=False)

        def eq2(anchor, p):
            p = p / p.norm(dim=1, keepdim=True)
            return torch.stack([-(anchor[i] @ p[i] / tau) + torch.logsumexp(anchor[i] @ p.T / tau, 0)
                                for i in range(len(p))]).mean()

        def reference(a, b):
            return 0.5 * (eq2(nn0, objective.predictor(b)) + eq2(nn1, objective.predictor(a)))

        assert_same(ours(objective, run, vs), theirs(reference, vs))
        bank(F.normalize(vs[0].detach(), dim=1), update=True)
        torch.testing.assert_close(objective.support.rows, bank.bank, **TOL)


def _swav_student(prototypes: int = 5) -> Net:
    from plugins.methods.swav import SwAVHeadOptions
    from plugins.networks.heads import dino_head

    torch.manual_seed(3)
    head = dino_head(SwAVHeadOptions(hidden_dims=[], bottleneck_dim=D, out_dim=prototypes), D).double()
    with torch.no_grad():
        head.last.weight.mul_(7.0)  # not unit-norm: the objective normalises the prototypes before the step
    return Net(head)


@pytest.mark.parametrize("queue", [False, True])
def test_swav_equals_lightly(queue):
    """2 global + 2 local crops: lightly's SwaVLoss (Sinkhorn-Knopp, swapped prediction) on the scores of the
    normalised prototypes; with a queue (used once full, filled with the global crops' embeddings), lightly's
    ``queue_outputs`` are the queued embeddings' scores."""
    student = _swav_student()
    extra = ["objective.queue_length=8", "objective.queue_start_epoch=0"] if queue else []
    objective, run = built("swav", *extra, student=student)
    ref = lightly_loss.SwaVLoss(temperature=0.1, sinkhorn_iterations=3, sinkhorn_epsilon=0.05)
    head = student.head
    for step in range(3):
        vs = views(4, seed=step)
        with torch.no_grad():
            w = F.normalize(head.last.weight, dim=1)
            queued = [q.rows @ w.T for q in objective.queues] if queue and step >= 1 else None

        def reference(*crops):
            scores = [F.normalize(head.mlp(c), dim=1) @ w.T for c in crops]
            return ref(scores[:2], scores[2:], queued)[0]

        expected = theirs(reference, vs)
        assert_same(ours(objective, run, vs), expected)
        torch.testing.assert_close(head.last.weight.norm(dim=1), torch.ones(5, dtype=torch.float64), **TOL)
    if queue:  # 3 steps of 8 rows: the queue holds the last step's global embeddings
        torch.testing.assert_close(objective.queues[0].rows, F.normalize(head.mlp(vs[0]), dim=1).detach(), **TOL)


def test_sinkhorn_codes_are_equipartitioned_assignments():
    """The codes of Algorithm 1 (SwAV): rows sum to 1 (a distribution over prototypes per sample) and, after the
    final row normalisation of Sinkhorn's alternation, each prototype gets about N/K of the batch."""
    from lightly.loss.swav_loss import sinkhorn as lightly_sinkhorn

    from plugins.methods.swav import sinkhorn

    scores = F.normalize(torch.randn(12, 4, dtype=torch.float64), dim=1)
    q = sinkhorn(scores, 0.5, 100)  # converged (at ε = 0.05 it takes far more iterations)
    torch.testing.assert_close(q.sum(1), torch.ones(12, dtype=torch.float64))
    torch.testing.assert_close(q.sum(0), torch.full((4,), 3.0, dtype=torch.float64), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sinkhorn(scores, 0.05, 3), lightly_sinkhorn(scores, 3, 0.05), **TOL)


def test_tico_equals_lightly_over_steps():
    """The running covariance C accumulates over steps: loss, gradients and C equal lightly's TiCoLoss (whose C is
    a plain attribute; rtlab's is a buffer of the objective)."""
    objective, run = built("tico")
    ref = lightly_loss.TiCoLoss(beta=0.9, rho=8.0)
    for step in range(3):
        vs = views(2, seed=step)
        key = run.teacher(vs[1]).detach()
        got = ours(objective, run, vs)
        expected = theirs(lambda a, _: ref(a, key), vs)
        torch.testing.assert_close(got[0], expected[0], **TOL)
        torch.testing.assert_close(got[1][0], expected[1][0], **TOL)
        torch.testing.assert_close(objective.covariance, ref.C, **TOL)


def test_wmse_equals_lightly_with_the_same_split():
    """Batches of 16 whitened in two random sub-batches of 8 (lightly draws the split from torch's global
    generator, rtlab from its own ``whitening`` stream: both seeded alike here)."""
    objective, run = built("wmse", "objective.w_size=8", "head.out_dim=4")
    vs = views(2, n=16, dim=4)
    objective.generator.manual_seed(123)
    ref = lightly_loss.WMSELoss(embedding_dim=4, w_size=8, num_samples=2).double()
    got = ours(objective, run, vs)
    torch.manual_seed(123)
    assert_same(got, theirs(lambda a, b: ref(torch.cat([a, b])), vs))


def test_mmcr_equals_lightly():
    """Three views per image, online and momentum: lightly's MMCRLoss on the L2-normalised embeddings (the paper
    normalises them; lightly's loss leaves that to the caller), stacked (images, views, dim)."""
    objective, run = built("mmcr", global_views=3)
    vs = views(3)
    ref = lightly_loss.MMCRLoss(lmda=0.005)

    def reference(*online):
        z_o = torch.stack([F.normalize(v, dim=1) for v in online], 1)
        z_m = torch.stack([F.normalize(run.teacher(v), dim=1).detach() for v in online], 1)
        return ref(z_o, z_m)

    assert_same(ours(objective, run, vs), theirs(reference, vs))
