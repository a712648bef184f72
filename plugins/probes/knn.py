"""k-nearest-neighbour probe on frozen embeddings, chunked on the device.

* ``metric=l2`` + ``vote=majority`` (default) — the paper's (docs/paper.md#evaluation-protocol): L2 on raw features,
  unweighted majority vote of the k = 20 nearest train embeddings (ties go to the smallest label);
* ``metric=cosine`` + ``vote=weighted`` — DINO's: cosine similarity, votes weighted by exp(sim / T), T = 0.07.

``k`` may be a list (``k=[10,20,200]``): one search finds the max(k) nearest rows, best first, and every k votes
with its prefix of them (keys ``knn_k10``, ``knn_k20``, …; ``knn`` is the first k).

The distances of a chunk of test rows to every train row are one matrix product. ``screen=bf16`` (``auto`` on CPUs
with bf16 matrix units: AMX or AVX512-BF16, from 20,000 train rows) computes that product in bfloat16, ~2-3x
faster, and keeps the result exact:

1. approximate scores s̃ = 2q·x − ‖x‖² (l2; q·x for cosine) from bf16 operands with fp32 accumulation, rounded to
   bf16. Every score's error is bounded by E(q) + u·|s̃| (u = 2⁻⁸), with E(q) from the actual rounding residuals of
   q and x (Cauchy–Schwarz) — a bound, not an estimate;
2. the train rows are cut into blocks of 16; the k-th largest block maximum τ has at least k rows at or above it,
   so blocks whose upper bound falls below lower(τ) hold no neighbour, and of the others only the rows whose upper
   bound reaches lower(τ) are candidates;
3. the votes (``knn_predict_ks``): a candidate is certainly among the k nearest when its lower bound is above the
   (k+1)-th best upper bound, possibly when its upper bound reaches the k-th best lower bound; of the rows in
   between, exactly k minus the certain ones are in. That bounds every class's vote (counts, or weights from the
   score bounds), and where one class's lower bound beats every other's upper bound — the label of the best row
   against all others together first, then class by class — the vote is decided with no exact score at all
   (on clustered features nearly every query, for k = 200 as for k = 20). The other queries re-score their
   candidates in fp32 (gathered, or one fp32 product when there are many) and vote as the exact computation does;
   ``auto`` stops screening when the bounds decide fewer than half of the votes (no clear neighbours: the bf16
   product would only add to the fp32 one);
3'. the neighbours themselves (``knn_neighbours``, ``auto`` up to k = 64): the k best candidates are re-scored in
   fp32; the k-th best exact score is at least their worst one, a far tighter floor; every other candidate whose
   upper bound reaches it (typically a dozen or two) is re-scored too, and the top k of all of them is the answer.

Predictions and neighbours are therefore those of the fp32 computation (up to exact ties); ``screen=off``
computes every score in the input precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F

from framework.api import hookimpl, one_cpu_thread, RtlabError

SCREENS = ("auto", "bf16", "off")
AUTO_MIN_TRAIN = 20_000  # screen=auto screens from this many train rows
AUTO_MAX_K = 64  # and, for knn_neighbours (which re-scores every neighbour in fp32), up to this many
BLOCK = 16  # train rows per block of the screening pass
_U = 2.0 ** -8  # bfloat16's unit roundoff
# the exact re-scoring of a query's candidates gathers their rows: past n / DENSE_RESCORE rows of n, one fp32
# product against every row costs less (50k x 1k x 512, one core: 450 gathered rows per query 1.5 s, the product 1.2 s)
DENSE_RESCORE = 128
GIVE_UP = 0.5  # screen=auto stops screening once the bounds leave more than this share of the votes open


def _compact(mask: torch.Tensor) -> torch.Tensor:
    """Per row, the column indices where ``mask`` is true, left-aligned in a (rows, max count) tensor padded
    with -1."""
    rows, cols = mask.nonzero(as_tuple=True)
    counts = torch.bincount(rows, minlength=len(mask))  # (a bool sum(1) is several times slower)
    out = torch.full((len(mask), int(counts.max()) if len(rows) else 0), -1, dtype=torch.long, device=mask.device)
    start = (counts.cumsum(0) - counts).repeat_interleave(counts)  # (indexing by rows is slower)
    out[rows, torch.arange(len(rows), device=mask.device) - start] = cols
    return out


def bf16_screening_pays(device: torch.device) -> bool:
    """bf16 screening is worth it on CPUs with bf16 matrix instructions (on GPUs the fp32 product is fast)."""
    from framework.api import cpu_has_bf16_units

    return device.type == "cpu" and cpu_has_bf16_units()


def _split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x = hi + lo with hi in bfloat16 and lo the (fp32) rounding residual."""
    hi = x.to(torch.bfloat16)
    return hi, x - hi.float()


class _Bounds:
    """Rigorous bounds on the exact scores of a chunk of queries from their bf16 scores a, which are the scores
    less a per-query offset c (a bf16 number, subtracted inside the product's fp32 accumulation): |exact − c − a|
    ≤ E(q) + rel·|a|, E(q) from the operands' rounding residuals (Cauchy–Schwarz) and the fp32 accumulation, rel
    from rounding the product to bf16 — which the offset keeps fine where it matters: c is near the k-th best
    score, so the scores near it are small. The bounds are increasing in a and are exact scores (c added back)."""

    rel = _U / (1 - _U)

    def __init__(self, scorer: _Scorer, q_hi: torch.Tensor, q_lo: torch.Tensor, offset: torch.Tensor) -> None:
        q_hi_norm, q_lo_norm = q_hi.float().norm(dim=1, keepdim=True), q_lo.norm(dim=1, keepdim=True)
        s = scorer
        self.err = (q_hi_norm * s.x_lo_norm + q_lo_norm * s.x_hi_norm + q_lo_norm * s.x_lo_norm + s.sq_err
                    + s.acc * (q_hi_norm * s.x_hi_norm + s.sq_max + offset.abs())) * 1.01
        self.offset = offset  # (c, 1)

    def upper(self, a: torch.Tensor) -> torch.Tensor:
        a = a.float()
        return a + self.rel * a.abs() + self.err + self.offset

    def lower(self, a: torch.Tensor) -> torch.Tensor:
        a = a.float()
        return a - self.rel * a.abs() - self.err + self.offset

    def reaching(self, floor: torch.Tensor) -> torch.Tensor:
        """A bf16 threshold per row: every bf16 score a with upper(a) ≥ floor is ≥ it (upper is increasing in a;
        the threshold is lowered by the fp32 rounding of computing it and by 2⁻⁷ so that rounding it to bf16
        cannot raise it past the exact one)."""
        t = floor - self.offset - self.err
        t = t - (floor.abs() + self.offset.abs() + self.err) * 2.0 ** -20
        t = torch.where(t >= 0, t / (1 + self.rel), t / (1 - self.rel))
        return (t - t.abs() * 2.0 ** -7 - 1e-30).to(torch.bfloat16)


@dataclass(frozen=True)
class _Vote:
    """How the k nearest rows vote: ``majority`` (one vote each, ties to the smallest label) or ``weighted``
    (exp(sim / temperature) for cosine, a softmax of the scores for l2)."""

    kind: str
    metric: str
    temperature: float
    num_classes: int

    def weights(self, t: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
        """Each row's vote from its score; with ``shift`` (l2), exp(t − shift), proportional to the softmax."""
        if self.kind == "majority":
            return torch.ones_like(t)
        if self.metric == "cosine":
            return (t / self.temperature).exp()
        return F.softmax(t, dim=1) if shift is None else (t - shift).exp()

    def exact(self, top: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
        """The labels voted by the first k of the exact scores ``top`` (best first) and their rows' ``labels``."""
        t, nb = top[:, :k], labels[:, :k]
        votes = torch.zeros(len(t), self.num_classes, device=t.device, dtype=t.dtype)
        return votes.scatter_add_(1, nb, self.weights(t)).argmax(1)

    def certain(self, inside: torch.Tensor, possible: torch.Tensor, lo: torch.Tensor, up: torch.Tensor,
                labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(label, decided) per query from bounds [lo, up] on the exact scores of its candidate rows (c, r) with
        ``labels``: ``inside`` marks the rows certainly among its k nearest, ``possible`` those that may be.
        Decided: the label wins whatever the exact scores are. First the label of the best row against all other
        classes together (cheap, and enough wherever one class dominates the neighbours), then class by class
        for the queries that leaves open."""
        won = labels.gather(1, up.argmax(1, keepdim=True))
        same = labels == won
        low, _ = self._bounds(same, inside, possible, lo, up, k)
        _, high = self._bounds(~same, inside, possible, lo, up, k)
        decided = self._wins(low, high, k)
        won = won.squeeze(1)
        rest = (~decided).nonzero().squeeze(1)
        if len(rest):
            won[rest], decided[rest] = self._by_class(inside[rest], possible[rest], lo[rest], up[rest], labels[rest],
                                                      k)
        return won, decided

    def _weights_bounds(self, lo: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each candidate row's vote at least and at most (weights increase with the score)."""
        if self.kind == "majority":
            return torch.ones_like(lo), torch.ones_like(up)
        shift = up.amax(1, keepdim=True) if self.metric == "l2" else None  # the softmax: any per-query shift
        return self.weights(lo, shift), self.weights(up, shift)

    def _bounds(self, member: torch.Tensor, inside: torch.Tensor, possible: torch.Tensor, lo: torch.Tensor,
                up: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Bounds (c,) on the votes of a query's ``member`` rows among its k nearest: those certainly in count
        fully; of the band (possibly in, not certainly), k − |inside| rows are in — as many members at least
        as the other band rows cannot fill, at most that many of them."""
        def count(m):
            return m.view(torch.uint8).sum(1, dtype=torch.int32)

        band = possible & ~inside
        mine, in_band = inside & member, band & member
        rest = k - count(inside)
        forced = (rest - count(band & ~member)).clamp(min=0)
        if self.kind == "majority":  # every weight 1
            n = count(mine)
            return n + forced, n + torch.minimum(count(in_band), rest)
        w_lo, w_up = self._weights_bounds(lo, up)
        zero, inf = torch.zeros((), device=lo.device), torch.tensor(float("inf"), device=lo.device)
        least = torch.where(in_band, w_lo, inf).amin(1)
        low = torch.where(mine, w_lo, zero).sum(1) + torch.where(forced > 0, forced * least, zero)
        band_up = torch.where(in_band, w_up, zero)
        high = torch.where(mine, w_up, zero).sum(1) + torch.minimum(band_up.sum(1), rest * band_up.amax(1))
        return low, high

    def _wins(self, low: torch.Tensor, high: torch.Tensor, k: int) -> torch.Tensor:
        """low beats high for certain: counts exactly; weights with a margin above the fp32 rounding of k terms'
        sums, here and in the exact computation (and never when a weight overflowed: left to the exact votes)."""
        if self.kind == "majority":
            return low > high
        return (low > high * (1 + 1e-4 + k * 2.0 ** -21) + 1e-30) & torch.isfinite(low) & torch.isfinite(high)

    def _by_class(self, inside: torch.Tensor, possible: torch.Tensor, lo: torch.Tensor, up: torch.Tensor,
                  labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`certain` with every class's bounds (:meth:`_bounds` per class, as scatters over the labels):
        the largest lower one wins if it beats every upper one (ties go to the smallest label)."""
        w_lo, w_up = self._weights_bounds(lo, up)
        band = possible & ~inside
        zero = torch.zeros((), device=lo.device)

        def per_class(values, reduce="sum", init=0.0):
            out = torch.full((len(lo), self.num_classes), init, device=lo.device)
            return out.scatter_reduce_(1, labels, values, reduce, include_self=reduce == "sum")

        rest = k - inside.sum(1, keepdim=True)
        in_band = per_class(band.view(torch.uint8).float())
        forced = (rest - (in_band.sum(1, keepdim=True) - in_band)).clamp(min=0)
        least = per_class(torch.where(band, w_lo, float("inf")), "amin", float("inf"))
        low = per_class(torch.where(inside, w_lo, zero)) + torch.where(forced > 0, forced * least, zero)
        band_up = torch.where(band, w_up, zero)
        high = per_class(torch.where(inside, w_up, zero)) + torch.minimum(per_class(band_up),
                                                                          rest * per_class(band_up, "amax"))
        win = low.argmax(1, keepdim=True)
        low_win = low.gather(1, win).expand_as(high)
        classes = torch.arange(self.num_classes, device=lo.device)
        beaten = self._wins(low_win, high, k) | (classes == win)
        if self.kind == "majority":
            beaten |= (low_win == high) & (classes > win)
        return win.squeeze(1), beaten.all(1)


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
        self.undecided = 0  # queries whose votes the bounds left open (re-scored in fp32)
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
        # columns: x (bf16) | −‖x‖² as hi + lo (l2 only) | a padding flag | ones (against the queries' offsets); the
        # row count is padded to whole blocks and the width to a multiple of 32 (what the bf16 matrix units tile;
        # 514 columns run ~25 % slower)
        self.norm_cols = 2 if self.sq is not None else 0
        self.flag_col = d + self.norm_cols
        width = -(-(self.flag_col + 2) // 32) * 32
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
        xa[:, self.flag_col + 1] = 1
        self.typical: dict[int, torch.Tensor] = {}  # k → the typical k-th best score (see _offset)
        self.xa = xa
        self.n = n
        self.x_hi_norm = x_hi.float().norm(dim=1).max()
        self.x_lo_norm = x_lo.norm(dim=1).max()
        # fp32 accumulation over K terms: at most K·2⁻²⁴ of the sum of |terms|
        self.acc = (width + 1) * 2.0 ** -24
        self.sq_max = self.sq.max() if self.sq is not None else torch.zeros((), device=self.train.device)

    def screened_topk(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, train indices) of the k best train rows of every query, as the fp32 scores would rank them."""
        s, b = self._bf16_scores(q, k)
        with one_cpu_thread():  # the selection: two dozen small or memory-bound operations
            return self._select(q, b, s, k)

    def screened_votes(self, q: torch.Tensor, ks: Sequence[int], labels: torch.Tensor, vote: _Vote
                       ) -> dict[int, torch.Tensor]:
        """The predicted label of every query for every k in ``ks``, as the fp32 scores would vote."""
        s, b = self._bf16_scores(q, max(ks))
        with one_cpu_thread():  # the selection: two dozen small or memory-bound operations
            return self._votes(q, b, s, ks, labels, vote)

    def _bf16_scores(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, _Bounds]:
        """The bf16 scores of ``q`` against every (padded) train row, less an offset near each query's k-th best
        score, and their bounds."""
        scale = 2.0 if self.sq is not None else 1.0
        q_hi, q_lo = _split(scale * q)
        qa = torch.zeros(len(q), self.xa.shape[1], dtype=torch.bfloat16, device=q.device)
        qa[:, :q.shape[1]] = q_hi
        qa[:, q.shape[1]:self.flag_col + 1] = -1  # −‖x‖² (hi, lo) and the padding flag
        qa[:, self.flag_col + 1] = -self._offset(q, k).to(torch.bfloat16)  # against a column of ones
        offset = -qa[:, self.flag_col + 1:self.flag_col + 2].float()
        return qa @ self.xa.T, _Bounds(self, q_hi, q_lo, offset)  # (c, n padded), bf16

    def _offset(self, q: torch.Tensor, k: int) -> torch.Tensor:
        """Per query, a score near its k-th best: the median k-th best similarity (cosine) or ‖q‖² less the median
        k-th nearest squared distance (l2) of the first queries seen, from their fp32 scores."""
        if k not in self.typical:
            sample = q[:32]
            kth = self.exact(sample).topk(k, dim=1).values[:, -1]
            self.typical[k] = (kth if self.sq is None else sample.pow(2).sum(1) - kth).median()
        if self.sq is None:
            return self.typical[k].expand(len(q))
        return q.pow(2).sum(1) - self.typical[k]

    def _candidates(self, s: torch.Tensor, k: int, b: _Bounds) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every row of the bf16 scores ``s`` whose upper bound can reach the k-th best lower bound, and more:
        (their bf16 scores as floats, (c, r), −3e38 where padding; their train indices; lower(τ), above which
        every row left out has its upper bound)."""
        c = len(s)
        # block b holds the rows b, b + nb, b + 2·nb, … (strided: the block maxima are a max over BLOCK contiguous
        # row vectors, which vectorises; any partition of the rows works)
        n_blocks = s.shape[1] // BLOCK
        blocks = s.view(c, BLOCK, n_blocks)
        block_max = blocks.amax(1)  # (c, n_blocks)
        pairs = block_max
        if k >= 64 and n_blocks >= 8 * k:  # the max of two blocks: half the topk, for a τ barely lower
            half = n_blocks // 2
            pairs = torch.maximum(block_max[:, :half], block_max[:, half:2 * half])
        tau = pairs.topk(k, dim=1, sorted=False).values.amin(1, keepdim=True)  # ≥ k rows score ≥ tau
        floor = b.lower(tau)  # ≤ the k-th best lower bound
        reach = b.reaching(floor)
        block_idx = _compact(block_max >= reach)  # the blocks that can hold a row of the top k (-1: padding)
        at = block_idx.clamp(min=0)  # one gather per row of the blocks: an expanded index would be copied whole
        kept = torch.stack([blocks[:, j].gather(1, at) for j in range(BLOCK)], 1)  # (c, BLOCK, kept blocks)
        # and of their rows those that can (typically a 16th); padding rows score about −3e38: never among them,
        # nor the rows of the padding blocks (an unreachable threshold)
        at_least = torch.where(block_idx >= 0, reach, torch.finfo(torch.bfloat16).max)[:, None, :]
        pos = _compact((kept >= at_least).flatten(1))
        ok = pos >= 0
        pos = pos.clamp(min=0)
        vals = kept.flatten(1).gather(1, pos).float().masked_fill_(~ok, -3e38)
        width = block_idx.shape[1]
        idx = (pos // width) * n_blocks + block_idx.gather(1, pos % width).clamp(min=0)
        return vals, idx, floor

    def _select(self, q: torch.Tensor, b: _Bounds, s: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The top k of every row of the bf16 scores ``s``: bound, discard, re-score the rest in fp32."""
        approx, train_idx, _ = self._candidates(s, k, b)
        # stage 1: the k best approximate rows, scored exactly; k rows reach their worst exact score, so the k-th
        # best exact score overall is at least that (typically far tighter than the bound below S_k)
        best_approx, best_pos = approx.topk(k, dim=1, sorted=False)
        first = train_idx.gather(1, best_pos)
        first_scores = self._exact_at(q, first)
        floor = torch.maximum(b.lower(best_approx.amin(1, keepdim=True)), first_scores.amin(1, keepdim=True))
        # stage 2: every other row whose upper bound reaches the floor (never a padding one)
        approx.scatter_(1, best_pos, float("-inf"))
        keep = b.upper(approx) >= floor
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

    def _votes(self, q: torch.Tensor, b: _Bounds, s: torch.Tensor, ks: Sequence[int], labels: torch.Tensor,
               vote: _Vote) -> dict[int, torch.Tensor]:
        """Every k's vote from the bounds alone where they decide it; the undecided queries re-score their
        candidates in fp32 and vote as the exact computation does."""
        kmax = max(ks)
        vals, idx, floor = self._candidates(s, kmax, b)
        if vals.shape[1] == kmax:  # one more (padding) row: the (kmax + 1)-th best bound below
            vals, idx = F.pad(vals, (0, 1), value=-3e38), F.pad(idx, (0, 1))
        lo, up = b.lower(vals), b.upper(vals)
        cand_labels = labels[idx.clamp(max=self.n - 1)]  # padding rows are never candidates
        top, pos = vals.topk(kmax + 1, dim=1)  # the kmax + 1 best rows, best first
        top_lo, top_up, top_labels = b.lower(top), b.upper(top), cand_labels.gather(1, pos)
        floor_max = top_lo[:, kmax - 1:kmax]
        won, decided = torch.empty(len(q), len(ks), dtype=torch.long, device=q.device), None
        for i, k in enumerate(ks):
            # certainly among the k nearest: a lower bound above the (k+1)-th best upper bound (and above lower(τ),
            # which bounds every row left out), so fewer than k rows can beat it; possibly: an upper bound
            # reaching the k-th best lower bound
            ceiling, floor_k = torch.maximum(top_up[:, k:k + 1], floor), top_lo[:, k - 1:k]
            if bool((top_up[:, -1:] >= floor_k).any()):  # candidates beyond the best kmax + 1 rows
                lo_k, up_k, labels_k = lo, up, cand_labels
            else:  # all of them among the best rows, a prefix: vote on that
                width = int((top_up >= floor_k).sum(1).max())
                lo_k, up_k, labels_k = top_lo[:, :width], top_up[:, :width], top_labels[:, :width]
            won[:, i], ok = vote.certain(lo_k > ceiling, up_k >= floor_k, lo_k, up_k, labels_k, k)
            decided = ok if decided is None else decided & ok
        preds = {k: won[:, i] for i, k in enumerate(ks)}  # (views of one tensor; the exact votes go in below)
        undecided = (~decided).nonzero().squeeze(1)
        self.undecided += len(undecided)
        if not len(undecided):
            return preds
        cand = up[undecided] >= floor_max[undecided]
        if int(cand.sum(1).max()) * DENSE_RESCORE > self.n:  # many candidates: the fp32 product is cheaper
            found = self.exact_votes(q[undecided], ks, labels, vote)
        else:  # the exact scores of kmax's candidates; every other row is beaten by kmax of them
            rows = idx[undecided].masked_fill(~cand, 0)
            exact = self._exact_at(q[undecided], rows).masked_fill_(~cand, float("-inf"))
            top, p = exact.topk(kmax, dim=1)
            nb = cand_labels[undecided].gather(1, p)
            found = {k: vote.exact(top, nb, k) for k in ks}
        for k in ks:
            preds[k][undecided] = found[k]
        return preds

    def exact_votes(self, q: torch.Tensor, ks: Sequence[int], labels: torch.Tensor, vote: _Vote
                    ) -> dict[int, torch.Tensor]:
        """Every k's vote from the fp32 scores of ``q`` against every train row."""
        kmax = min(max(ks), len(self.train))
        top, idx = self.exact(q).topk(kmax, dim=1)
        nb = labels[idx]
        return {k: vote.exact(top, nb, min(k, kmax)) for k in ks}

    def _exact_at(self, q: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """fp32 scores of every query against its own train rows ``rows`` (queries × r)."""
        x = self.train.index_select(0, rows.flatten()).view(*rows.shape, -1)
        scores = torch.bmm(x, q.unsqueeze(2)).squeeze(2)
        return scores if self.sq is None else scores.mul_(2.0).sub_(self.sq[rows])


def _screening(train: torch.Tensor, k: int, metric: str, screen: str, max_k: int | None) -> bool:
    """Whether to screen in bf16 a search of the ``k`` nearest ``train`` rows (checking the options)."""
    if metric not in ("l2", "cosine"):
        raise RtlabError(f"knn: metric must be l2 or cosine, got '{metric}'")
    if screen not in SCREENS:
        raise RtlabError(f"knn: screen must be one of {', '.join(SCREENS)}, got '{screen}'")
    # auto: only from AUTO_MIN_TRAIN rows, below which the selection costs what the cheaper product saves
    # (measured on one core: 10k x 10k x 512 ties, 25k x 10k is 1.35x faster, 50k x 10k 1.9x)
    use = screen == "bf16" or (screen == "auto" and bf16_screening_pays(train.device)
                               and len(train) >= AUTO_MIN_TRAIN and (max_k is None or k <= max_k))
    return use and len(train) > BLOCK * k  # the blocks need more rows than k of them hold


def knn_neighbours(train: torch.Tensor, test: torch.Tensor, k: int = 20, metric: str = "l2", chunk: int = 1024,
                   screen: str = "auto") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Per chunk of ``test`` rows: (scores, indices) of their ``k`` nearest ``train`` rows, best first; scores
    are larger for closer rows (l2: 2q·x − ‖x‖² after centring, cosine: the similarity)."""
    k = min(k, len(train))
    # auto screens only for k ≤ AUTO_MAX_K: the exact re-scoring gathers k train rows per query, which at k = 200
    # costs more than the bf16 product saves (50k x 1k x 512, one core: k=200 screened 13.5 s, all-fp32 8.5 s)
    use_screen = _screening(train, k, metric, screen, AUTO_MAX_K)
    scorer = _Scorer(train, metric, use_screen)
    for i in range(0, len(test), chunk):
        q = scorer.queries(test[i:i + chunk])
        yield scorer.screened_topk(q, k) if use_screen else scorer.exact(q).topk(k, dim=1)


def knn_predict(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, k: int = 20,
                metric: str = "l2", vote: str = "majority", temperature: float = 0.07, num_classes: int = 0,
                chunk: int = 1024, screen: str = "auto") -> torch.Tensor:
    """Predicted labels of ``test`` rows from their ``k`` nearest ``train`` rows (memory: chunk x N_train)."""
    return knn_predict_ks(train, train_labels, test, [k], metric, vote, temperature, num_classes, chunk,
                          screen)[k]


def knn_predict_ks(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, ks: Sequence[int],
                   metric: str = "l2", vote: str = "majority", temperature: float = 0.07, num_classes: int = 0,
                   chunk: int = 1024, screen: str = "auto", stats: dict[str, int] | None = None
                   ) -> dict[int, torch.Tensor]:
    """Predicted labels for every k in ``ks``, from one search of the max(ks) nearest rows: the neighbours come
    best first, so the k nearest are the first k of them (votes for each k are one scatter over a prefix). With
    the bf16 screen, a query's votes come from the bounds on its scores wherever they decide them."""
    if vote not in ("majority", "weighted"):
        raise RtlabError(f"knn: vote must be majority or weighted, got '{vote}'")
    voter = _Vote(vote, metric, temperature, num_classes or int(train_labels.max()) + 1)
    use_screen = _screening(train, min(max(ks), len(train)), metric, screen, None)
    scorer = _Scorer(train, metric, use_screen)
    preds: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    screened = 0
    for i in range(0, len(test), chunk):
        q = scorer.queries(test[i:i + chunk])
        if use_screen:
            found = scorer.screened_votes(q, ks, train_labels, voter)
            screened += len(q)
            # auto: when the bounds leave most votes open (features with no clear neighbours), the rest of the
            # queries skip the bf16 product, which then only adds to the fp32 one
            use_screen = screen == "bf16" or scorer.undecided <= GIVE_UP * screened
        else:
            found = scorer.exact_votes(q, ks, train_labels, voter)
        for k in ks:
            preds[k].append(found[k])
    if stats is not None:
        stats.update(screened=screened, rescored=scorer.undecided)
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
