"""Evaluation metrics of the three papers, each computed on a whole gathered split.

Every function takes the predictions and targets of a full split (torch tensors, NumPy arrays or nested
sequences; moved to the CPU, never modified) and returns a Python ``float``. What each reproduces:

* GearNet / ESM-GearNet (EC, GO-BP/MF/CC, fold): torchdrug 0.2.1, ``torchdrug/metrics/metric.py``
  (DeepGraphLearning/torchdrug, tag v0.2.1, commit 6066fbd82360abb5f270cba1eca560af01b8cc90):
  :func:`f1_max` (``f1_max``, protein-centric Fmax), :func:`auprc_micro` (the ``auprc@micro`` of torchdrug's
  ``MultipleBinaryClassification`` task: ``area_under_prc(pred.flatten(), target.flatten())``),
  :func:`auroc` (``area_under_roc``), :func:`accuracy` (``accuracy``). No library computes torchdrug's
  Fmax; it and the torchdrug variants of AUPRC / AUROC are written here (vectorised, in torch, float64).
* Wu et al. (Comm. Biol. 2023) and ATOM3D (PSR, LBA, MSP, ...): :func:`rmse`, :func:`mae`
  (scikit-learn), :func:`spearman`, :func:`pearson`, :func:`kendall` (SciPy), their per-target average
  :func:`per_group` and :func:`first_rank_loss`.

**Ties.** torchdrug's ranking metrics sort with ``torch.argsort`` and then treat *every sorted position* as a
threshold, so tied scores are ranked one by one in whatever order the sort leaves them in. That order is
unspecified: on the CPU, torch's default (unstable) sort keeps tied elements in index order only for short
inputs (<= 16 elements), and in ``f1_max`` the per-protein sort and the sort of all scores may order the same
ties differently; then torchdrug's Fmax is neither of the two orders' value, and it is NaN when the first
score of the global order is not any protein's first in its own order (its precision average divides 0 by
0; a constant 5 x 5 score matrix does it). The ranking functions therefore take ``ties``:

* ``"group"`` (default): tied scores form one threshold; every distinct score is a threshold. Independent of
  the order of the examples, never NaN. :func:`auprc_micro` and :func:`auroc` then equal scikit-learn's
  ``average_precision_score`` / ``roc_auc_score`` (ATOM3D's and Wu et al.'s AUPRC / AUROC) and call them;
  :func:`f1_max` takes torchdrug's precision and recall at the distinct scores only.
* ``"torchdrug"``: exactly torchdrug's computation, with the same ``torch.argsort`` calls (on the CPU), so it
  reproduces torchdrug 0.2.1 run on the CPU with the same torch build, tie order (and NaN) included;
  ``tests/test_metrics.py`` checks it against ``tests/fixtures/torchdrug_metrics.pt``. The papers ran
  torchdrug on GPUs, whose sort may order ties differently again.
* ``"stable"``: torchdrug's one-threshold-per-score definition with ties ranked in index order (row-major for
  ``f1_max``): deterministic; equal to ``"torchdrug"`` whenever torch's sort keeps ties in index order.

Without ties the three agree (up to float rounding), so for a trained model's float32 logits the choice does
not matter. With ties ``"torchdrug"`` / ``"stable"`` can exceed or fall below ``"group"`` (a positive ranked
ahead of a tied negative counts fully instead of half in AUROC, for instance; a constant prediction is scored
as if ranked by column).

Other differences found against scikit-learn / SciPy, each documented at the function: torchdrug's AUROC of a
single-class target is 0 (an epsilon-guarded 0 / 0; scikit-learn: NaN with a warning), its AUPRC without
positives 0 (scikit-learn: 0 with a warning); its Spearman correlation uses average ranks for ties like SciPy
but is 0 for a constant input (SciPy: NaN; :func:`spearman` returns NaN); its Pearson correlation is NaN for a
constant input, like SciPy. Fmax follows torchdrug, not CAFA: proteins without any positive label count in
the recall average (with recall 0).

Errors: every function raises :class:`geoplm.errors.GeoplmError` naming itself and both shapes when shapes do
not match, and on empty input, NaN scores or non-binary targets where binary ones are required.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from scipy import stats
from sklearn import metrics as skm
from torch import Tensor

from geoplm.errors import GeoplmError

ArrayLike = Tensor | np.ndarray | Sequence[Any]
Metric = Callable[[ArrayLike, ArrayLike], float]

#: Tie modes of the ranking metrics (see the module docstring).
TIES = ("group", "torchdrug", "stable")

#: torchdrug's guard against 0 / 0 in ``f1_max``, ``area_under_prc`` and ``area_under_roc``.
_EPS = 1e-10


# --------------------------------------------------------------------------------------------------- inputs


def _tensor(x: ArrayLike, fn: str, name: str) -> Tensor:
    """``x`` as a CPU tensor (no copy where possible); rejects non-numeric data and NaN."""
    if isinstance(x, Tensor):
        t = x.detach().cpu()
    else:
        a = np.asarray(x)
        if a.dtype.kind not in "biuf":
            raise GeoplmError(f"{fn}: {name} must be numeric, got dtype {a.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(a))
    if t.is_complex():
        raise GeoplmError(f"{fn}: {name} must be real, got dtype {t.dtype}")
    if t.is_floating_point() and bool(torch.isnan(t).any()):
        raise GeoplmError(f"{fn}: {name} contains NaN")
    return t


def _pair(fn: str, pred: ArrayLike, target: ArrayLike, ndim: int | None, shape: str) -> tuple[Tensor, Tensor]:
    """``pred`` and ``target`` as tensors of one shape with ``ndim`` dimensions (any if None), not empty."""
    p, t = _tensor(pred, fn, "pred"), _tensor(target, fn, "target")
    if p.shape != t.shape or (ndim is not None and p.dim() != ndim):
        raise GeoplmError(f"{fn}: pred has shape {tuple(p.shape)} and target {tuple(t.shape)}; expected both {shape}")
    if p.numel() == 0:
        raise GeoplmError(f"{fn}: empty input (shape {tuple(p.shape)})")
    return p, t


def _scores(p: Tensor) -> Tensor:
    """Scores to sort: floating tensors as they are (the sort order is the same in any precision), others
    as float64."""
    return p if p.is_floating_point() else p.double()


def _binary(fn: str, t: Tensor) -> Tensor:
    """A 0/1 (or bool) target as float64; raises on any other value."""
    t = t.double()
    if not bool(((t == 0) | (t == 1)).all()):
        values = torch.unique(t)[:5].tolist()
        raise GeoplmError(f"{fn}: target must be binary (0/1), got values {values}...")
    return t


def _ties(fn: str, ties: str) -> bool:
    """Whether the sort must be stable for ``ties`` (validated)."""
    if ties not in TIES:
        raise GeoplmError(f"{fn}: ties must be one of {TIES}, got {ties!r}")
    return ties != "torchdrug"


def _numpy64(fn: str, pred: ArrayLike, target: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p, t = _pair(fn, pred, target, 1, "(N,)")
    return p.double().numpy(), t.double().numpy()


# ------------------------------------------------------------------------------------- ranking (torchdrug)


def f1_max(pred: ArrayLike, target: ArrayLike, *, ties: str = "group") -> float:
    """Protein-centric Fmax: the best F1 over all score thresholds (torchdrug ``f1_max``).

    For a threshold ``t``, protein ``i`` (row) predicts the terms (columns) with ``pred[i, j] >= t``;
    ``tp_i(t)`` of them are positive, ``k_i(t)`` in all, ``P_i`` positives in its row. Then

    * ``precision(t) = mean over {i : k_i(t) >= 1} of tp_i(t) / k_i(t)`` (proteins with a prediction only),
    * ``recall(t) = mean over all N proteins of tp_i(t) / (P_i + 1e-10)`` (a protein without positive labels
      has recall 0 and still counts, unlike CAFA, which drops it),
    * ``Fmax = max_t 2 precision(t) recall(t) / (precision(t) + recall(t) + 1e-10)``.

    With ``ties="group"`` the thresholds are the distinct scores. torchdrug takes the N * C scores one by one
    in descending order instead, each tied score its own threshold (``ties="torchdrug"`` / ``"stable"``, see
    the module docstring); without ties the two are the same. Only the ranking of the scores matters (logits
    and sigmoids give the same value unless the sigmoid rounds distinct logits to one float).

    Vectorised: two sorts, O(N C log(N C)) time; at N = 3,000, C = 2,000 about 2.7 s and 0.45 GB beyond the
    inputs (float64 buffers) on this project's 2-core machine.

    Args:
        pred: scores ``(N, C)`` (logits or probabilities).
        target: binary labels ``(N, C)`` (0/1 or bool).
        ties: ``"group"`` (default), ``"torchdrug"`` or ``"stable"`` (module docstring).

    Raises:
        GeoplmError: shapes differ or are not 2-D (names both), empty input, NaN in ``pred``, non-binary
            ``target``, unknown ``ties``.

    Source: torchdrug ``torchdrug/metrics/metric.py`` ``f1_max`` (tag v0.2.1, commit 6066fbd).
    """
    stable = _ties("f1_max", ties)
    p, t = _pair("f1_max", pred, target, 2, "(N, C)")
    p, t = _scores(p), _binary("f1_max", t) == 1
    n, c = p.shape

    # Each protein's precision and recall after its k best-scored terms (k = 1..C).
    order = torch.argsort(p, dim=1, descending=True, stable=stable)
    tp = t.gather(1, order).cumsum(1, dtype=torch.float64)
    recall = tp / (t.sum(1, keepdim=True, dtype=torch.float64) + _EPS)
    del t
    precision = tp.div_(torch.arange(1, c + 1, dtype=torch.float64))
    # What adding its k-th term adds to the protein's precision and recall, stored at that term's column.
    zero = torch.zeros(n, 1, dtype=torch.float64)
    d_precision = torch.empty_like(precision).scatter_(1, order, torch.diff(precision, dim=1, prepend=zero))
    del precision
    d_recall = torch.empty_like(recall).scatter_(1, order, torch.diff(recall, dim=1, prepend=zero))
    del recall
    first = torch.zeros(n, c, dtype=torch.bool).scatter_(1, order[:, :1], True)
    del order

    # Lower the threshold one score at a time (all proteins together): the sums of the increments are the
    # sums of the proteins' current precision and recall; `covered` counts proteins with a prediction.
    flat = p.flatten()
    ranked = torch.argsort(flat, descending=True, stable=stable)
    covered = first.flatten()[ranked].cumsum(0)
    mean_precision = d_precision.flatten()[ranked].cumsum(0) / covered
    del d_precision, covered
    mean_recall = d_recall.flatten()[ranked].cumsum(0) / n
    del d_recall
    f1 = 2 * mean_precision * mean_recall / (mean_precision + mean_recall + _EPS)
    if ties == "group":
        f1 = f1[_last_of_ties(flat[ranked])]
    return float(f1.max())


def _last_of_ties(sorted_scores: Tensor) -> Tensor:
    """Mask of the positions where the next (descending) score differs, or the last: one per distinct score."""
    last = torch.ones(sorted_scores.numel(), dtype=torch.bool)
    last[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    return last


def auprc_micro(pred: ArrayLike, target: ArrayLike, *, ties: str = "group") -> float:
    """Micro-averaged area under the precision-recall curve (torchdrug ``auprc@micro``).

    All ``N * C`` (score, label) pairs are pooled (``flatten``) and ranked by descending score; with ``prec(k)``
    the fraction of positives among the first ``k``, ``AUPRC = sum over positives of prec(rank) / (P + 1e-10)``
    (average precision). With ``ties="group"`` the tied scores form one threshold and the value is
    scikit-learn's ``average_precision_score`` (which is called); ``"torchdrug"`` / ``"stable"`` rank tied
    pairs one by one (module docstring), so a tie between a positive and a negative counts as whichever
    the sort put first. Without positives the value is 0 in every mode (torchdrug's; scikit-learn also gives
    0, with a warning).

    Args:
        pred: scores of any shape, e.g. ``(N, C)``.
        target: binary labels of the same shape.
        ties: ``"group"`` (default), ``"torchdrug"`` or ``"stable"`` (module docstring).

    Raises:
        GeoplmError: shapes differ (names both), empty input, NaN in ``pred``, non-binary ``target``, unknown
            ``ties``.

    Sources: torchdrug ``torchdrug/metrics/metric.py`` ``area_under_prc`` and
    ``torchdrug/tasks/property_prediction.py`` ``MultipleBinaryClassification.evaluate`` (``auprc@micro``),
    tag v0.2.1, commit 6066fbd; ``sklearn.metrics.average_precision_score``.
    """
    stable = _ties("auprc_micro", ties)
    p, t = _pair("auprc_micro", pred, target, None, "the same shape")
    p, t = _scores(p).flatten(), _binary("auprc_micro", t).flatten()
    positives = float(t.sum())
    if positives == 0:
        return 0.0
    if ties == "group":
        return float(skm.average_precision_score(t.numpy(), p.double().numpy()))
    hit = t[torch.argsort(p, descending=True, stable=stable)]
    precision = hit.cumsum(0) / torch.arange(1, hit.numel() + 1, dtype=torch.float64)
    return float(precision[hit == 1].sum() / (positives + _EPS))


def auroc(pred: ArrayLike, target: ArrayLike, *, ties: str = "group") -> float:
    """Area under the ROC curve: the fraction of (positive, negative) pairs ranked positive first.

    ``AUROC = sum over negatives of #(positives ranked above it) / (P * N_neg + 1e-10)`` (torchdrug
    ``area_under_roc``). ``ties="torchdrug"`` / ``"stable"`` rank tied pairs one by one (module docstring),
    so a positive tied with a negative counts 1 or 0; ``ties="group"`` counts it 1/2 and equals scikit-learn's
    ``roc_auc_score`` (which is called). A target with one class only gives 0.0 with ``"torchdrug"`` /
    ``"stable"`` (torchdrug's 0 / (0 + 1e-10)) and NaN with ``"group"`` (undefined).

    Args:
        pred: scores ``(N,)``.
        target: binary labels ``(N,)``.
        ties: ``"group"`` (default), ``"torchdrug"`` or ``"stable"`` (module docstring).

    Raises:
        GeoplmError: shapes differ or are not 1-D (names both), empty input, NaN in ``pred``, non-binary
            ``target``, unknown ``ties``.

    Sources: torchdrug ``torchdrug/metrics/metric.py`` ``area_under_roc`` (tag v0.2.1, commit 6066fbd);
    ``sklearn.metrics.roc_auc_score``.
    """
    stable = _ties("auroc", ties)
    p, t = _pair("auroc", pred, target, 1, "(N,)")
    p, t = _scores(p), _binary("auroc", t)
    positives = float(t.sum())
    negatives = t.numel() - positives
    if ties == "group":
        if positives == 0 or negatives == 0:
            return float("nan")
        return float(skm.roc_auc_score(t.numpy(), p.double().numpy()))
    hit = t[torch.argsort(p, descending=True, stable=stable)]
    positives_above = hit.cumsum(0)
    return float(positives_above[hit == 0].sum() / (positives * negatives + _EPS))


# ------------------------------------------------------------------------------------------ classification


def accuracy(pred: ArrayLike, target: ArrayLike) -> float:
    """Fraction of examples whose predicted class equals the target class.

    ``pred`` is either scores ``(N, C)``, whose ``argmax`` over classes is the predicted class (the first
    maximal class on ties, as ``torch.argmax`` on the CPU and ``numpy.argmax``), or class ids ``(N,)``.
    Scores ``(N,)`` of a binary task are not accepted: threshold them first.

    Args:
        pred: ``(N, C)`` scores or ``(N,)`` integer class ids.
        target: ``(N,)`` integer class ids.

    Raises:
        GeoplmError: shapes do not fit (names both), empty input, NaN, non-integer class ids.

    Sources: torchdrug ``torchdrug/metrics/metric.py`` ``accuracy`` (tag v0.2.1, commit 6066fbd);
    ``sklearn.metrics.accuracy_score`` (computes it).
    """
    p, t = _tensor(pred, "accuracy", "pred"), _tensor(target, "accuracy", "target")
    if t.dim() != 1 or p.dim() not in (1, 2) or p.shape[0] != t.shape[0]:
        raise GeoplmError(
            f"accuracy: pred has shape {tuple(p.shape)} and target {tuple(t.shape)}; expected (N, C) or (N,) and (N,)"
        )
    if t.numel() == 0:
        raise GeoplmError(f"accuracy: empty input (shape {tuple(t.shape)})")
    if p.dim() == 2:
        if p.shape[1] == 0:
            raise GeoplmError(f"accuracy: pred has no classes (shape {tuple(p.shape)})")
        p = p.argmax(dim=1)
    for name, ids in (("pred", p), ("target", t)):
        if ids.is_floating_point() and not bool((ids == ids.round()).all()):
            raise GeoplmError(f"accuracy: {name} must hold integer class ids (or pred (N, C) scores)")
    return float(skm.accuracy_score(t.long().numpy(), p.long().numpy()))


# -------------------------------------------------------------------------------------- regression (N,)


def rmse(pred: ArrayLike, target: ArrayLike) -> float:
    """Root-mean-square error ``sqrt(mean_i (pred_i - target_i)^2)``.

    Args:
        pred, target: ``(N,)`` each.

    Raises:
        GeoplmError: shapes differ or are not 1-D (names both), empty input, NaN.

    Source: ``sklearn.metrics.root_mean_squared_error`` (computes it); the ``rmse`` of ATOM3D
    (``atom3d/util/metrics.py``) and of Wu et al. (``mean_squared_error(squared=False)``).
    """
    p, t = _numpy64("rmse", pred, target)
    return float(skm.root_mean_squared_error(t, p))


def mae(pred: ArrayLike, target: ArrayLike) -> float:
    """Mean absolute error ``mean_i |pred_i - target_i|``.

    Args:
        pred, target: ``(N,)`` each.

    Raises:
        GeoplmError: shapes differ or are not 1-D (names both), empty input, NaN.

    Source: ``sklearn.metrics.mean_absolute_error`` (computes it); ATOM3D ``atom3d/util/metrics.py`` ``mae``.
    """
    p, t = _numpy64("mae", pred, target)
    return float(skm.mean_absolute_error(t, p))


def _correlation(fn: str, statistic: Callable[..., Any], pred: ArrayLike, target: ArrayLike) -> float:
    p, t = _numpy64(fn, pred, target)
    if p.size < 2:
        raise GeoplmError(f"{fn}: a correlation needs at least 2 pairs, got {p.size}")
    with warnings.catch_warnings():
        # A constant input gives NaN (documented); SciPy's warning would repeat every evaluation.
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(statistic(p, t).statistic)


def spearman(pred: ArrayLike, target: ArrayLike) -> float:
    """Spearman rank correlation: the Pearson correlation of the ranks, tied values getting their average rank.

    NaN when ``pred`` or ``target`` is constant. torchdrug's ``spearmanr`` ranks ties the same way (average
    ranks via ``unique`` + ``scatter_mean``) and agrees to float32 precision, except on a constant input,
    where its ``1e-10`` guard gives 0 instead of NaN.

    Args:
        pred, target: ``(N,)`` each, ``N >= 2``.

    Raises:
        GeoplmError: shapes differ or are not 1-D (names both), fewer than 2 pairs, NaN.

    Sources: ``scipy.stats.spearmanr`` (computes it; used by ATOM3D ``atom3d/util/metrics.py`` and
    Wu et al.); torchdrug ``torchdrug/metrics/metric.py`` ``spearmanr`` (tag v0.2.1, commit 6066fbd).
    """
    return _correlation("spearman", stats.spearmanr, pred, target)


def pearson(pred: ArrayLike, target: ArrayLike) -> float:
    """Pearson correlation ``cov(pred, target) / (std(pred) std(target))``; NaN when either is constant.

    torchdrug's ``pearsonr`` computes the same (centred vectors' cosine; NaN on a constant input too).

    Args:
        pred, target: ``(N,)`` each, ``N >= 2``.

    Raises:
        GeoplmError: shapes differ or are not 1-D (names both), fewer than 2 pairs, NaN.

    Sources: ``scipy.stats.pearsonr`` (computes it; ATOM3D ``atom3d/util/metrics.py``, Wu et al.); torchdrug
    ``torchdrug/metrics/metric.py`` ``pearsonr`` (tag v0.2.1, commit 6066fbd).
    """
    return _correlation("pearson", stats.pearsonr, pred, target)


def kendall(pred: ArrayLike, target: ArrayLike) -> float:
    """Kendall's tau-b ``(n_c - n_d) / sqrt((n_0 - n_1)(n_0 - n_2))`` (ties in either input corrected for).

    ``n_c`` / ``n_d``: concordant / discordant pairs, ``n_0 = N (N - 1) / 2``, ``n_1`` / ``n_2``: pairs tied
    in ``pred`` / ``target``. NaN when either input is constant. torchdrug 0.2.1 has no Kendall tau.

    Args:
        pred, target: ``(N,)`` each, ``N >= 2``.

    Raises:
        GeoplmError: shapes differ or are not 1-D (names both), fewer than 2 pairs, NaN.

    Source: ``scipy.stats.kendalltau`` (``variant="b"``, computes it; ATOM3D ``atom3d/util/metrics.py``,
    Wu et al., and pandas' ``Series.corr(method="kendall")`` in ATOM3D's PSR example).
    """
    return _correlation("kendall", stats.kendalltau, pred, target)


#: Metrics of signature ``metric(pred, target) -> float`` by name, for tasks and :func:`per_group`.
METRICS: dict[str, Metric] = {
    "f1_max": f1_max,
    "auprc_micro": auprc_micro,
    "auroc": auroc,
    "accuracy": accuracy,
    "rmse": rmse,
    "mae": mae,
    "spearman": spearman,
    "pearson": pearson,
    "kendall": kendall,
}


# -------------------------------------------------------------------------------------------- per group


def _groups(fn: str, group: ArrayLike, n: int) -> tuple[np.ndarray, int]:
    """Group codes ``0..G-1`` (sorted labels) of a ``(N,)`` label array (ints or strings) and ``G``."""
    g = group.detach().cpu().numpy() if isinstance(group, Tensor) else np.asarray(group)
    if g.ndim != 1 or g.shape[0] != n:
        raise GeoplmError(f"{fn}: group has shape {g.shape}; expected ({n},), one label per example")
    labels, codes = np.unique(g, return_inverse=True)
    return codes.reshape(-1), len(labels)


def per_group(
    metric: str | Metric,
    pred: ArrayLike,
    target: ArrayLike,
    group: ArrayLike,
    *,
    min_size: int = 3,
    skip_nan: bool = True,
) -> float:
    """Mean over groups of ``metric`` computed within each group (e.g. per-target Spearman of PSR decoys).

    ``mean over kept groups g of metric(pred[group == g], target[group == g])``. Groups with fewer than
    ``min_size`` examples are left out, and so (``skip_nan``) are groups whose value is NaN (a constant
    prediction or target within the group); NaN when no group is left. The defaults follow ATOM3D's
    evaluation (``examples/psr/gnn/train.py`` ``compute_correlations``, drorlab/atom3d commit 463c2ca:
    targets with fewer than 3 decoys skipped, pandas' NaN-skipping mean). Wu et al. (smiles724/GGNN_Meets_PLM
    ``main.py`` ``get_metrics._correlation``, commit 088c1f5) average over all targets with ``np.mean``
    (no size filter, NaN propagates): ``min_size=1, skip_nan=False``, except that a one-example group then
    raises for the correlations here. PSR targets have hundreds of decoys, so both rules give one number there.

    Args:
        metric: a name in :data:`METRICS` or a function ``(pred, target) -> float``.
        pred: ``(N, ...)`` predictions; sliced along the first axis.
        target: ``(N, ...)`` targets.
        group: ``(N,)`` group labels (integers or strings).
        min_size: smallest group size kept (>= 1).
        skip_nan: leave NaN group values out of the mean (else the mean is NaN).

    Raises:
        GeoplmError: unknown metric name, ``min_size < 1``, lengths differ (names the shapes), empty input;
            and whatever ``metric`` raises on a group.

    Source: ATOM3D and Wu et al. as above.
    """
    if isinstance(metric, str):
        if metric not in METRICS:
            raise GeoplmError(f"per_group: unknown metric {metric!r}; known: {sorted(METRICS)}")
        metric = METRICS[metric]
    if min_size < 1:
        raise GeoplmError(f"per_group: min_size must be >= 1, got {min_size}")
    p, t = _tensor(pred, "per_group", "pred"), _tensor(target, "per_group", "target")
    if p.dim() == 0 or t.dim() == 0 or p.shape[0] != t.shape[0]:
        raise GeoplmError(
            f"per_group: pred has shape {tuple(p.shape)} and target {tuple(t.shape)}; expected the same length N"
        )
    if p.shape[0] == 0:
        raise GeoplmError("per_group: empty input")
    codes, num_groups = _groups("per_group", group, p.shape[0])
    order = torch.from_numpy(np.argsort(codes, kind="stable"))
    bounds = np.searchsorted(codes[order.numpy()], np.arange(num_groups + 1))
    values = []
    for g in range(num_groups):
        members = order[bounds[g] : bounds[g + 1]]
        if len(members) >= min_size:
            values.append(metric(p[members], t[members]))
    values = np.asarray(values, dtype=np.float64)
    if skip_nan:
        values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def first_rank_loss(pred: ArrayLike, target: ArrayLike, group: ArrayLike) -> float:
    """Mean over groups of ``max(target) - target[argmax(pred)]``: quality lost by picking the top-scored decoy.

    Per group (e.g. a PSR target's decoys, ``target`` = GDT-TS, higher is better), the target of the example
    ranked first by ``pred`` is subtracted from the group's best target; the loss is averaged over all groups
    (a one-example group has loss 0). Among tied top predictions the first in input order is taken (numpy's
    ``argmax``, as GraphQA does).

    Args:
        pred: ``(N,)`` predicted quality (higher = better).
        target: ``(N,)`` true quality.
        group: ``(N,)`` group labels (integers or strings).

    Raises:
        GeoplmError: shapes differ or are not 1-D (names both), empty input, NaN.

    Source: GraphQA (Baldassarre et al., Bioinformatics 2021), baldassarreFe/graphqa ``src/graphqa/metrics.py``
    ``first_rank_loss`` (commit 3d644ec), averaged per target as there; ATOM3D's PSR code and Wu et al.'s
    ``main.py`` report correlations only.
    """
    p, t = _numpy64("first_rank_loss", pred, target)
    codes, num_groups = _groups("first_rank_loss", group, p.shape[0])
    best = np.full(num_groups, -np.inf)
    np.maximum.at(best, codes, t)
    # Sort by group, then descending pred, then input position: each group's first row is its top pick.
    order = np.lexsort((np.arange(p.size), -p, codes))
    first = np.ones(p.size, dtype=bool)
    first[1:] = codes[order][1:] != codes[order][:-1]
    picked = order[first]
    return float(np.mean(best[codes[picked]] - t[picked]))
