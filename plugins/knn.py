"""k-nearest-neighbour probe on frozen embeddings, chunked on the device.

* ``metric=l2`` + ``vote=majority`` (default) — the paper's probe (PAPER.md §3): L2 distance on raw features,
  unweighted majority vote of the k = 20 nearest train embeddings (ties go to the smallest label);
* ``metric=cosine`` + ``vote=weighted`` — DINO's: cosine similarity, votes weighted by exp(sim / T), T = 0.07.

The distances of a chunk of test rows to every train row are one matrix product. ``screen=bf16`` (``auto`` on CPUs
with bf16 matrix units: AMX or AVX512-BF16) computes that product in bfloat16, ~3x faster, and keeps it exact:

1. approximate scores s̃ = 2q·x − ‖x‖² (l2; q·x for cosine) from bf16 operands with fp32 accumulation, rounded to
   bf16. Every score's error is bounded by E(q) + u·|s̃| (u = 2⁻⁸), with E(q) from the actual rounding residuals of
   q and x (Cauchy–Schwarz) — a bound, not an estimate;
2. the train rows are cut into blocks of 128; the k-th largest block maximum τ has at least k rows at or above it,
   so the k-th best exact score is at least L = lower(τ); every row whose upper bound falls below L is out;
3. the remaining candidates (typically k + a few dozen) are re-scored in fp32 and the top k taken.

The neighbours found are therefore those of the fp32 computation (up to exact ties); ``screen=off`` computes every
score in the input precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from framework import hookimpl
from framework.errors import RtlabError

SCREENS = ("auto", "bf16", "off")
BLOCK = 16  # train rows per block of the screening pass
_U = 2.0 ** -8  # bfloat16's unit roundoff


def bf16_screening_pays(device: torch.device) -> bool:
    """bf16 screening is worth it on CPUs with bf16 matrix instructions (on GPUs the fp32 product is fast)."""
    if device.type != "cpu":
        return False
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)()
                or getattr(cpu, "_is_avx512_bf16_supported", lambda: False)())


def _split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x = hi + lo with hi in bfloat16 and lo the (fp32) rounding residual."""
    hi = x.to(torch.bfloat16)
    return hi, x - hi.float()


class _Scorer:
    """Scores of test rows against the train rows: larger is closer. l2: 2q·x − ‖x‖² on mean-centred features
    (−‖q − x‖² up to a per-row constant); cosine: q̂·x̂."""

    def __init__(self, train: torch.Tensor, metric: str, screen: bool) -> None:
        train = train.float()
        self.metric = metric
        if metric == "cosine":
            self.shift = None
            self.train = F.normalize(train, dim=1)
            self.sq = None
        else:  # centring changes no distance and shrinks the norms the rounding errors scale with
            self.shift = train.mean(0)
            self.train = train - self.shift
            self.sq = self.train.pow(2).sum(1)
        self.screen = screen
        if screen:
            self._prepare_screen()

    def queries(self, test: torch.Tensor) -> torch.Tensor:
        q = test.float()
        return F.normalize(q, dim=1) if self.metric == "cosine" else q - self.shift

    def exact(self, q: torch.Tensor) -> torch.Tensor:
        """fp32 scores of ``q`` (queries) against every train row."""
        if self.sq is None:
            return q @ self.train.T
        return torch.addmm(self.sq.unsqueeze(0), q, self.train.T, beta=-1.0, alpha=2.0)

    # ------------------------------------------------------------------------------------------- bf16 screening
    def _prepare_screen(self) -> None:
        n, d = self.train.shape
        x_hi, x_lo = _split(self.train)
        cols = [x_hi]
        sq_err = torch.zeros(())
        if self.sq is not None:  # -‖x‖² enters the product as two bf16 columns (hi + lo) against a -1 column
            sq_hi, sq_lo = _split(self.sq)
            sq_lo_hi = sq_lo.to(torch.bfloat16)
            cols += [sq_hi[:, None], sq_lo_hi[:, None]]
            sq_err = (sq_lo - sq_lo_hi.float()).abs().max()
        xa = torch.cat(cols, 1)
        pad = (-n) % BLOCK  # padding rows score about -3e38 (l2) or 0 - 3e38 via the norm column: never chosen
        if pad:
            filler = torch.zeros(pad, xa.shape[1], dtype=xa.dtype, device=xa.device)
            if self.sq is not None:
                filler[:, d] = 3e38
            else:
                filler = torch.cat([filler, torch.full((pad, 1), 3e38, dtype=xa.dtype, device=xa.device)], 1)
                xa = torch.cat([xa, torch.zeros(n, 1, dtype=xa.dtype, device=xa.device)], 1)
            xa = torch.cat([xa, filler])
        elif self.sq is None:
            xa = torch.cat([xa, torch.zeros(n, 1, dtype=xa.dtype, device=xa.device)], 1)
        self.xa = xa
        self.n = n
        self.x_hi_norm = x_hi.float().norm(dim=1).max()
        self.x_lo_norm = x_lo.norm(dim=1).max()
        # fp32 accumulation over K terms: at most K·2⁻²⁴ of the sum of |terms|
        sq_max = self.sq.max() if self.sq is not None else torch.zeros(())
        self.acc = (xa.shape[1] + 1) * 2.0 ** -24
        self.sq_max = sq_max
        self.sq_err = sq_err

    def screened_topk(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, train indices) of the k best train rows of every query, as the fp32 scores would rank them."""
        c = len(q)
        scale = 2.0 if self.sq is not None else 1.0
        q_hi, q_lo = _split(scale * q)
        qa = torch.cat([q_hi, -torch.ones(c, self.xa.shape[1] - q_hi.shape[1], dtype=torch.bfloat16,
                                          device=q.device)], 1)
        if self.sq is None:  # the padding column: 0 for real rows, a huge negative score for padding rows
            qa[:, -1] = -1
        s = qa @ self.xa.T  # (c, n padded), bf16
        q_hi_norm, q_lo_norm = q_hi.float().norm(dim=1), q_lo.norm(dim=1)
        err = (q_hi_norm * self.x_lo_norm + q_lo_norm * self.x_hi_norm + q_lo_norm * self.x_lo_norm + self.sq_err
               + self.acc * (q_hi_norm * self.x_hi_norm + self.sq_max)) * 1.01  # E(q): operand rounding
        err = err[:, None]
        rel = _U / (1 - _U)  # output rounding: |exact sum − s̃| ≤ rel·|s̃|

        def upper(a):
            a = a.float()
            return a + rel * a.abs() + err

        def lower(a):
            a = a.float()
            return a - rel * a.abs() - err

        # block b holds the rows b, b + nb, b + 2·nb, … (strided: the block maxima are a max over BLOCK contiguous
        # row vectors, which vectorises; any partition of the rows works)
        n_blocks = s.shape[1] // BLOCK
        blocks = s.view(c, BLOCK, n_blocks)
        block_max = blocks.amax(1)  # (c, n_blocks)
        tau = block_max.topk(k, dim=1).values[:, -1:]  # ≥ k rows score ≥ tau (each of k blocks has one)
        keep_block = upper(block_max) >= lower(tau)  # a block below this holds no row of the top k
        nb = int(keep_block.sum(1).max())
        block_idx = torch.where(keep_block, torch.arange(n_blocks, device=q.device), -1
                                ).topk(nb, dim=1, sorted=False).values  # kept block ids (-1: padding)
        approx = blocks.gather(2, block_idx.clamp(min=0)[:, None, :].expand(-1, BLOCK, -1)).float()  # (c, B, nb)
        approx = approx.masked_fill_((block_idx < 0)[:, None, :], float("-inf")).flatten(1)
        train_idx = (torch.arange(BLOCK, device=q.device)[None, :, None] * n_blocks
                     + block_idx.clamp(min=0)[:, None, :]).flatten(1)  # (c, B·nb); padding rows score -3e38
        # the k-th best approximate score among the kept rows is the k-th best overall: a tighter floor
        floor = lower(approx.topk(k, dim=1, sorted=False).values.amin(1, keepdim=True))
        keep = upper(approx) >= floor
        m = int(keep.sum(1).max())
        top_approx, pos = approx.masked_fill_(~keep, float("-inf")).topk(m, dim=1, sorted=False)
        cand_ok = top_approx > float("-inf")
        cand = train_idx.gather(1, pos).masked_fill_(~cand_ok, 0)  # padding points at row 0, masked below
        x = self.train.index_select(0, cand.flatten()).view(c, m, -1)
        scores = torch.bmm(x, q.unsqueeze(2)).squeeze(2)
        if self.sq is not None:
            scores = scores.mul_(2.0).sub_(self.sq[cand])
        scores = scores.masked_fill_(~cand_ok, float("-inf"))
        top, pos = scores.topk(k, dim=1)
        return top, cand.gather(1, pos)


def knn_neighbours(train: torch.Tensor, test: torch.Tensor, k: int = 20, metric: str = "l2", chunk: int = 1024,
                   screen: str = "auto") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Per chunk of ``test`` rows: (scores, indices) of their ``k`` nearest ``train`` rows, best first; scores
    are larger for closer rows (l2: 2q·x − ‖x‖² after centring, cosine: the similarity)."""
    if metric not in ("l2", "cosine"):
        raise RtlabError(f"knn: metric must be l2 or cosine, got '{metric}'")
    if screen not in SCREENS:
        raise RtlabError(f"knn: screen must be one of {', '.join(SCREENS)}, got '{screen}'")
    k = min(k, len(train))
    use_screen = screen == "bf16" or (screen == "auto" and bf16_screening_pays(train.device))
    use_screen = use_screen and len(train) > BLOCK * k  # small problems: the plain product is cheaper
    scorer = _Scorer(train, metric, use_screen)
    for i in range(0, len(test), chunk):
        q = scorer.queries(test[i:i + chunk])
        if use_screen:
            top, idx = scorer.screened_topk(q, k)
            yield top, idx
        else:
            yield scorer.exact(q).topk(k, dim=1)


def knn_predict(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, k: int = 20,
                metric: str = "l2", vote: str = "majority", temperature: float = 0.07, num_classes: int = 0,
                chunk: int = 1024, screen: str = "auto") -> torch.Tensor:
    """Predicted labels of ``test`` rows from their ``k`` nearest ``train`` rows (memory: chunk x N_train)."""
    if metric not in ("l2", "cosine") or vote not in ("majority", "weighted"):
        raise RtlabError(f"knn: metric must be l2|cosine and vote majority|weighted, got {metric}/{vote}")
    num_classes = num_classes or int(train_labels.max()) + 1
    preds = []
    for top, idx in knn_neighbours(train, test, k, metric, chunk, screen):
        neighbours = train_labels[idx]
        if vote == "majority":
            weights = torch.ones_like(top)
        else:
            weights = (top / temperature).exp() if metric == "cosine" else F.softmax(top, dim=1)
        votes = torch.zeros(len(top), num_classes, device=top.device, dtype=weights.dtype)
        votes.scatter_add_(1, neighbours, weights)
        preds.append(votes.argmax(1))
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long, device=test.device)


@dataclass
class KNNOptions:
    k: int = 20
    metric: str = "l2"  # l2 (paper) | cosine (DINO)
    vote: str = "majority"  # majority (paper) | weighted (DINO: exp(sim / temperature))
    temperature: float = 0.07
    chunk: int = 1024  # test rows per distance block
    screen: str = "auto"  # bf16 screening + exact fp32 re-scoring: auto (CPUs with bf16 matrix units) | bf16 | off


class KNNProbe:
    """k-NN accuracy of the test split against the train split (metric ``knn``)."""

    def __init__(self, opts: KNNOptions) -> None:
        if opts.k <= 0:
            raise RtlabError(f"evaluator.knn.k must be positive, got {opts.k}")
        if opts.screen not in SCREENS:
            raise RtlabError(f"evaluator.knn.screen must be one of {', '.join(SCREENS)}, got '{opts.screen}'")
        if opts.metric not in ("l2", "cosine") or opts.vote not in ("majority", "weighted"):
            raise RtlabError(f"evaluator.knn.metric must be l2 or cosine and evaluator.knn.vote majority or weighted, "
                             f"got {opts.metric}/{opts.vote}")
        self.opts = opts

    def evaluate(self, features, run):
        if features.train_labels.min() < 0:
            raise RtlabError("the k-NN probe needs labels, but the dataset has none; set data.label_column "
                             "or drop the probe with evaluator=[]")
        o = self.opts
        pred = knn_predict(features.train, features.train_labels, features.test, o.k, o.metric, o.vote,
                           o.temperature, features.num_classes, o.chunk, o.screen)
        return {"knn": float((pred == features.test_labels).float().mean())}


@hookimpl
def rtlab_register(registry):
    registry.add("evaluator", "knn", KNNProbe, KNNOptions)
