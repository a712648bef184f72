"""k-nearest-neighbour probe on frozen embeddings, chunked on the device.

* ``metric=l2`` + ``vote=majority`` (default) — the paper's probe (PAPER.md §3): L2 distance on raw features,
  unweighted majority vote of the k = 20 nearest train embeddings (ties go to the smallest label);
* ``metric=cosine`` + ``vote=weighted`` — DINO's: cosine similarity, votes weighted by exp(sim / T), T = 0.07.

``k`` may be a list (``k=[10,20,200]``): one search finds the max(k) nearest rows, best first, and every k votes
with its prefix of them (keys ``knn_k10``, ``knn_k20``, …; ``knn`` is the first k).

The distances of a chunk of test rows to every train row are one matrix product. ``screen=bf16`` (``auto`` on CPUs
with bf16 matrix units: AMX or AVX512-BF16, from 20,000 train rows and for k ≤ 64) computes that product in bfloat16, ~3x faster,
and keeps it exact:

1. approximate scores s̃ = 2q·x − ‖x‖² (l2; q·x for cosine) from bf16 operands with fp32 accumulation, rounded to
   bf16. Every score's error is bounded by E(q) + u·|s̃| (u = 2⁻⁸), with E(q) from the actual rounding residuals of
   q and x (Cauchy–Schwarz) — a bound, not an estimate;
2. the train rows are cut into blocks of 16; the k-th largest block maximum τ has at least k rows at or above it,
   so blocks whose upper bound falls below lower(τ) hold no neighbour;
3. the k best remaining rows are re-scored in fp32: the k-th best exact score is at least their worst one, which
   is a far tighter floor; every other row whose upper bound reaches it (typically a dozen or two) is re-scored in
   fp32 too, and the top k of all re-scored rows is the answer.

The neighbours found are therefore those of the fp32 computation (up to exact ties); ``screen=off`` computes every
score in the input precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F

from framework import hookimpl
from framework.errors import RtlabError

SCREENS = ("auto", "bf16", "off")
AUTO_MIN_TRAIN = 20_000  # screen=auto screens from this many train rows
AUTO_MAX_K = 64  # and up to this many neighbours
BLOCK = 16  # train rows per block of the screening pass
_U = 2.0 ** -8  # bfloat16's unit roundoff


def _compact(mask: torch.Tensor) -> torch.Tensor:
    """Per row, the column indices where ``mask`` is true, left-aligned in a (rows, max count) tensor padded
    with -1."""
    counts = mask.sum(1)
    out = torch.full((mask.shape[0], int(counts.max())), -1, dtype=torch.long, device=mask.device)
    rows, cols = mask.nonzero(as_tuple=True)
    slot = torch.arange(len(rows), device=mask.device) - (counts.cumsum(0) - counts)[rows]
    out[rows, slot] = cols
    return out


def bf16_screening_pays(device: torch.device) -> bool:
    """bf16 screening is worth it on CPUs with bf16 matrix instructions (on GPUs the fp32 product is fast)."""
    from framework.device import cpu_has_bf16_units

    return device.type == "cpu" and cpu_has_bf16_units()


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
        # columns: x (bf16) | −‖x‖² as hi + lo (l2 only) | a padding flag; the row count is padded to whole blocks
        # and the width to a multiple of 32 (what the bf16 matrix units tile; 514 columns run ~25 % slower)
        self.norm_cols = 2 if self.sq is not None else 0
        self.flag_col = d + self.norm_cols
        width = -(-(self.flag_col + 1) // 32) * 32
        rows = -(-n // BLOCK) * BLOCK
        xa = torch.zeros(rows, width, dtype=torch.bfloat16, device=self.train.device)
        xa[:n, :d] = x_hi
        self.sq_err = torch.zeros((), device=self.train.device)
        if self.sq is not None:  # scored against −1 columns of the queries
            sq_hi, sq_lo = _split(self.sq)
            xa[:n, d] = sq_hi
            xa[:n, d + 1] = sq_lo.to(torch.bfloat16)
            self.sq_err = (sq_lo - xa[:n, d + 1].float()).abs().max()
        xa[n:, self.flag_col] = 3e38  # padding rows score about −3e38: never candidates
        self.xa = xa
        self.n = n
        self.x_hi_norm = x_hi.float().norm(dim=1).max()
        self.x_lo_norm = x_lo.norm(dim=1).max()
        # fp32 accumulation over K terms: at most K·2⁻²⁴ of the sum of |terms|
        self.acc = (width + 1) * 2.0 ** -24
        self.sq_max = self.sq.max() if self.sq is not None else torch.zeros((), device=self.train.device)

    def screened_topk(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, train indices) of the k best train rows of every query, as the fp32 scores would rank them."""
        c = len(q)
        scale = 2.0 if self.sq is not None else 1.0
        q_hi, q_lo = _split(scale * q)
        qa = torch.zeros(c, self.xa.shape[1], dtype=torch.bfloat16, device=q.device)
        qa[:, :q.shape[1]] = q_hi
        qa[:, q.shape[1]:self.flag_col + 1] = -1  # −‖x‖² (hi, lo) and the padding flag
        s = qa @ self.xa.T  # (c, n padded), bf16
        # the selection below is two dozen small or memory-bound operations: on one thread they cost about as much
        # as on two when the cores are free, and several times less when another process holds a core (every
        # parallel operation ends in a barrier that waits for the descheduled thread)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._select(q, q_hi, q_lo, s, k)
        finally:
            torch.set_num_threads(threads)

    def _select(self, q: torch.Tensor, q_hi: torch.Tensor, q_lo: torch.Tensor, s: torch.Tensor, k: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The top k of every row of the bf16 scores ``s``: bound, discard, re-score the rest in fp32."""
        c = len(q)
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

        def reaching(floor):
            """A bf16 threshold per row: every bf16 score a with upper(a) ≥ floor is ≥ it (upper is increasing in
            a; the threshold is lowered by 2⁻⁷ so rounding it to bf16 cannot raise it past the exact one)."""
            t = floor - err
            t = torch.where(t >= 0, t / (1 + rel), t / (1 - rel))
            return (t - t.abs() * 2.0 ** -7 - 1e-30).to(torch.bfloat16)

        # block b holds the rows b, b + nb, b + 2·nb, … (strided: the block maxima are a max over BLOCK contiguous
        # row vectors, which vectorises; any partition of the rows works)
        n_blocks = s.shape[1] // BLOCK
        blocks = s.view(c, BLOCK, n_blocks)
        block_max = blocks.amax(1)  # (c, n_blocks)
        tau = block_max.topk(k, dim=1).values[:, -1:]  # ≥ k rows score ≥ tau (each of k blocks has one)
        keep_block = block_max >= reaching(lower(tau))  # a block below this holds no row of the top k
        block_idx = _compact(keep_block)  # kept block ids, left-aligned (-1: padding)
        approx = blocks.gather(2, block_idx.clamp(min=0)[:, None, :].expand(-1, BLOCK, -1)).float()  # (c, B, nb)
        approx = approx.masked_fill_((block_idx < 0)[:, None, :], float("-inf")).flatten(1)
        train_idx = (torch.arange(BLOCK, device=q.device)[None, :, None] * n_blocks
                     + block_idx.clamp(min=0)[:, None, :]).flatten(1)  # (c, B·nb); padding rows score -3e38
        # stage 1: the k best approximate rows, scored exactly; k rows reach their worst exact score, so the k-th
        # best exact score overall is at least that (typically far tighter than the bound below S_k)
        best_approx, best_pos = approx.topk(k, dim=1, sorted=False)
        first = train_idx.gather(1, best_pos)
        first_scores = self._exact_at(q, first)
        floor = torch.maximum(lower(best_approx.amin(1, keepdim=True)), first_scores.amin(1, keepdim=True))
        # stage 2: every other row whose upper bound reaches the floor
        approx.scatter_(1, best_pos, float("-inf"))
        keep = upper(approx) >= floor
        m = int(keep.sum(1).max())
        if m == 0:
            top, pos = first_scores.topk(k, dim=1)
            return top, first.gather(1, pos)
        more_approx, pos = approx.masked_fill_(~keep, float("-inf")).topk(m, dim=1, sorted=False)
        more_ok = more_approx > float("-inf")
        more = train_idx.gather(1, pos).masked_fill_(~more_ok, 0)  # padding points at row 0, masked below
        more_scores = self._exact_at(q, more).masked_fill_(~more_ok, float("-inf"))
        top, pos = torch.cat([first_scores, more_scores], 1).topk(k, dim=1)
        return top, torch.cat([first, more], 1).gather(1, pos)

    def _exact_at(self, q: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """fp32 scores of every query against its own train rows ``rows`` (queries × r)."""
        x = self.train.index_select(0, rows.flatten()).view(*rows.shape, -1)
        scores = torch.bmm(x, q.unsqueeze(2)).squeeze(2)
        return scores if self.sq is None else scores.mul_(2.0).sub_(self.sq[rows])


def knn_neighbours(train: torch.Tensor, test: torch.Tensor, k: int = 20, metric: str = "l2", chunk: int = 1024,
                   screen: str = "auto") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Per chunk of ``test`` rows: (scores, indices) of their ``k`` nearest ``train`` rows, best first; scores
    are larger for closer rows (l2: 2q·x − ‖x‖² after centring, cosine: the similarity)."""
    if metric not in ("l2", "cosine"):
        raise RtlabError(f"knn: metric must be l2 or cosine, got '{metric}'")
    if screen not in SCREENS:
        raise RtlabError(f"knn: screen must be one of {', '.join(SCREENS)}, got '{screen}'")
    k = min(k, len(train))
    # auto: only from AUTO_MIN_TRAIN rows, below which the selection costs what the cheaper product saves
    # (measured on one core: 10k x 10k x 512 ties, 25k x 10k is 1.35x faster, 50k x 10k 1.9x)
    # and only for k ≤ AUTO_MAX_K: the exact re-scoring gathers k train rows per query, which at k = 200 costs more
    # than the bf16 product saves (50k x 1k x 512, one core: k=200 screened 13.5 s, all-fp32 8.5 s; k=20 5.7 s)
    use_screen = screen == "bf16" or (screen == "auto" and bf16_screening_pays(train.device)
                                       and len(train) >= AUTO_MIN_TRAIN and k <= AUTO_MAX_K)
    use_screen = use_screen and len(train) > BLOCK * k  # the blocks need more rows than k of them hold
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
    return knn_predict_ks(train, train_labels, test, [k], metric, vote, temperature, num_classes, chunk,
                          screen)[k]


def knn_predict_ks(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, ks: Sequence[int],
                   metric: str = "l2", vote: str = "majority", temperature: float = 0.07, num_classes: int = 0,
                   chunk: int = 1024, screen: str = "auto") -> dict[int, torch.Tensor]:
    """Predicted labels for every k in ``ks``, from one search of the max(ks) nearest rows: the neighbours come
    best first, so the k nearest are the first k of them (votes for each k are one scatter over a prefix)."""
    if vote not in ("majority", "weighted"):  # the metric and screen are checked by knn_neighbours
        raise RtlabError(f"knn: vote must be majority or weighted, got '{vote}'")
    num_classes = num_classes or int(train_labels.max()) + 1
    preds: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for top, idx in knn_neighbours(train, test, max(ks), metric, chunk, screen):
        neighbours = train_labels[idx]
        for k in ks:
            kk = min(k, top.shape[1])
            t, nb = top[:, :kk], neighbours[:, :kk]
            if vote == "majority":
                weights = torch.ones_like(t)
            else:
                weights = (t / temperature).exp() if metric == "cosine" else F.softmax(t, dim=1)
            votes = torch.zeros(len(t), num_classes, device=t.device, dtype=weights.dtype)
            votes.scatter_add_(1, nb, weights)
            preds[k].append(votes.argmax(1))
    empty = torch.zeros(0, dtype=torch.long, device=test.device)
    return {k: torch.cat(p) if p else empty for k, p in preds.items()}


@dataclass
class KNNOptions:
    k: Any = 20  # an int, or a list [10, 20, 200]: every k from one search (keys knn_k10, …; knn = the first)
    metric: str = "l2"  # l2 (paper) | cosine (DINO)
    vote: str = "majority"  # majority (paper) | weighted (DINO: exp(sim / temperature))
    temperature: float = 0.07
    chunk: int = 1024  # test rows per distance block
    screen: str = "auto"  # bf16 screening + exact fp32 re-scoring: auto (CPUs with bf16 matrix units) | bf16 | off


def _ks(value: Any) -> list[int]:
    """``evaluator.knn.k`` as a list of distinct positive ints, in the order given."""
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    ok = bool(values) and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)
    ks = [int(v) for v in values] if ok else []
    if not ok or len(set(ks)) != len(ks):
        raise RtlabError(f"evaluator.knn.k must be a positive integer or a list of distinct ones (k=[10,20,200]), "
                         f"got {value}")
    return ks


class KNNProbe:
    """k-NN accuracy of the test split against the train split (metric ``knn``; with a list of k also
    ``knn_k<k>`` for every k, ``knn`` being the first)."""

    def __init__(self, opts: KNNOptions) -> None:
        self.ks = _ks(opts.k)
        if opts.screen not in SCREENS:
            raise RtlabError(f"evaluator.knn.screen must be one of {', '.join(SCREENS)}, got '{opts.screen}'")
        if opts.metric not in ("l2", "cosine") or opts.vote not in ("majority", "weighted"):
            raise RtlabError(f"evaluator.knn.metric must be l2 or cosine and evaluator.knn.vote majority or weighted, "
                             f"got {opts.metric}/{opts.vote}")
        if not opts.temperature > 0:
            raise RtlabError(f"evaluator.knn.temperature must be positive, got {opts.temperature}")
        self.many = not isinstance(opts.k, int)
        self.opts = opts

    def evaluate(self, features, run):
        if features.train_labels.min() < 0:
            raise RtlabError("the k-NN probe needs labels, but the dataset has none; set data.label_column "
                             "or drop the probe with evaluator=[]")
        o = self.opts
        preds = knn_predict_ks(features.train, features.train_labels, features.test, self.ks, o.metric, o.vote,
                               o.temperature, features.num_classes, o.chunk, o.screen)
        acc = {k: float((p == features.test_labels).float().mean()) for k, p in preds.items()}
        out = {"knn": acc[self.ks[0]]}
        if self.many:
            out.update({f"knn_k{k}": acc[k] for k in self.ks})
        return out


@hookimpl
def rtlab_register(registry):
    registry.add("evaluator", "knn", KNNProbe, KNNOptions)
