"""geoplm.metrics against torchdrug 0.2.1, scikit-learn / SciPy, brute force and hand-computed values.

The torchdrug values come from ``tests/fixtures/torchdrug_metrics.pt``, written once by
``benchmarks/torchdrug_metrics_reference.py`` in a torchdrug environment (``benchmarks/torchdrug_env.sh``; see
``benchmarks/README.md``); no torchdrug is needed here. torchdrug's own values for tied scores depend on the
order in which torch's (unstable) CPU sort leaves ties; the fixture records that order's SHA-256, and the
``ties="torchdrug"`` comparisons on tied cases are skipped, with the reason, if the torch running the tests
orders them differently. ``ties="stable"`` is compared with torchdrug run under a stable sort on every case.

Tolerances: 1e-9 where torchdrug computed in float64 (float64 targets), 1e-6 where it computed in float32
(int64 targets, Spearman ranks), exact equality where both sides run the same library call.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from sklearn import metrics as skm

from geoplm import metrics
from geoplm.errors import GeoplmError

FIXTURE = Path(__file__).parent / "fixtures" / "torchdrug_metrics.pt"
MULTILABEL = ["hand", "continuous", "sigmoid", "rounded", "coarse", "separable", "constant", "long_target"]
TIED = ["rounded", "coarse", "constant"]
TIGHT = 1e-9
FLOAT32 = 1e-6


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(FIXTURE, weights_only=True)


def _sha256(order: torch.Tensor) -> str:
    return hashlib.sha256(order.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


def _require_same_tie_order(case: dict, *, rows: bool = True) -> None:
    """Skip unless this torch's default argsort orders the case's scores as torchdrug's run did."""
    pred = case["pred"]
    same = _sha256(pred.flatten().argsort(descending=True)) == case["flat_order_sha256"]
    if rows:
        same = same and _sha256(pred.argsort(descending=True, dim=1)) == case["row_order_sha256"]
    if not same:
        pytest.skip(f"torch {torch.__version__} orders tied scores differently from the fixture's torch")


def _has_ties(pred: torch.Tensor) -> bool:
    return pred.unique().numel() < pred.numel()


def _tolerance(case: dict) -> float:
    return TIGHT if case["target"].dtype == torch.float64 else FLOAT32


# ------------------------------------------------------------------------------------- brute-force Fmax


def _fmax_of_masks(masks, target: np.ndarray) -> float:
    """torchdrug's Fmax over the given predicted-term masks (one per threshold), computed plainly."""
    positives = target.sum(1)
    best = 0.0
    for predicted in masks:
        k = predicted.sum(1)
        tp = (predicted & target).sum(1)
        covered = k > 0
        precision = (tp[covered] / k[covered]).mean()
        recall = (tp / (positives + 1e-10)).mean()
        best = max(best, 2 * precision * recall / (precision + recall + 1e-10))
    return best


def _fmax_distinct_thresholds(pred: np.ndarray, target: np.ndarray) -> float:
    return _fmax_of_masks((pred >= t for t in np.unique(pred)), target)


def _fmax_index_order(pred: np.ndarray, target: np.ndarray) -> float:
    """Each score its own threshold, ties in row-major index order."""
    order = np.argsort(-pred.ravel(), kind="stable")

    def masks():
        predicted = np.zeros(pred.size, dtype=bool)
        for position in order:
            predicted[position] = True
            yield predicted.reshape(pred.shape)

    return _fmax_of_masks(masks(), target)


# ------------------------------------------------------------------------------------ torchdrug parity


@pytest.mark.parametrize("name", MULTILABEL)
def test_ranking_metrics_match_torchdrug_with_stable_sort(reference, name):
    case = reference["multilabel"][name]
    pred, target, tol = case["pred"], case["target"], _tolerance(case)
    assert metrics.f1_max(pred, target, ties="stable") == pytest.approx(case["f1_max_stable"], abs=tol)
    assert metrics.auprc_micro(pred, target, ties="stable") == pytest.approx(case["auprc_micro_stable"], abs=tol)
    flat_pred, flat_target = pred.flatten(), target.flatten()
    assert metrics.auroc(flat_pred, flat_target, ties="stable") == pytest.approx(case["auroc_micro_stable"], abs=tol)


@pytest.mark.parametrize("name", MULTILABEL)
def test_ranking_metrics_match_torchdrug_default_sort(reference, name):
    case = reference["multilabel"][name]
    _require_same_tie_order(case)
    pred, target, tol = case["pred"], case["target"], _tolerance(case)
    # NaN included: torchdrug's f1_max is NaN on the constant case.
    assert metrics.f1_max(pred, target, ties="torchdrug") == pytest.approx(case["f1_max"], abs=tol, nan_ok=True)
    assert metrics.auprc_micro(pred, target, ties="torchdrug") == pytest.approx(case["auprc_micro"], abs=tol)
    flat_pred, flat_target = pred.flatten(), target.flatten()
    assert metrics.auroc(flat_pred, flat_target, ties="torchdrug") == pytest.approx(case["auroc_micro"], abs=tol)


def test_fixture_ties_make_torch_order_matter(reference):
    # The tied cases exercise the tie handling: torchdrug's values under torch's default sort differ from
    # those under a stable sort, and both from the grouped ones.
    for name in TIED:
        case = reference["multilabel"][name]
        pred, target = case["pred"], case["target"]
        assert _has_ties(pred)
        assert not abs(case["f1_max"] - case["f1_max_stable"]) < 1e-4  # NaN counts as different
        assert abs(case["auprc_micro"] - case["auprc_micro_stable"]) > 5e-4
        assert abs(metrics.f1_max(pred, target) - case["f1_max_stable"]) > 1e-4
    for name in ("continuous", "sigmoid", "hand"):
        case = reference["multilabel"][name]
        assert case["f1_max"] == case["f1_max_stable"] and case["auprc_micro"] == case["auprc_micro_stable"]


def test_constant_scores_torchdrug_nan_and_grouped_by_hand(reference):
    # 5 proteins x 5 terms, all scores 0.5, term 0 positive everywhere. One threshold predicts everything:
    # precision 1/5, recall 1, F1 1/3. torchdrug (torch's CPU sort) gives NaN, ties in index order 0.5333
    # (thresholds in row-major order: after the first row, precision 1/5 over one protein, recall 1/5...).
    case = reference["multilabel"]["constant"]
    pred, target = case["pred"], case["target"]
    assert math.isnan(case["f1_max"])
    assert metrics.f1_max(pred, target) == pytest.approx(1 / 3, abs=1e-9)
    assert metrics.f1_max(pred, target, ties="stable") == pytest.approx(case["f1_max_stable"], abs=TIGHT)
    assert metrics.auroc(pred.flatten(), target.flatten()) == 0.5
    assert metrics.auprc_micro(pred, target) == pytest.approx(0.2, abs=1e-12)


@pytest.mark.parametrize("name", ["continuous", "rounded", "single_class"])
def test_binary_auroc_auprc_match_torchdrug(reference, name):
    case = reference["binary"][name]
    pred, target = case["pred"], case["target"]
    assert metrics.auroc(pred, target, ties="stable") == pytest.approx(case["auroc_stable"], abs=TIGHT)
    assert metrics.auprc_micro(pred, target, ties="stable") == pytest.approx(case["auprc_stable"], abs=TIGHT)
    _require_same_tie_order(case, rows=False)
    assert metrics.auroc(pred, target, ties="torchdrug") == pytest.approx(case["auroc"], abs=TIGHT)
    assert metrics.auprc_micro(pred, target, ties="torchdrug") == pytest.approx(case["auprc"], abs=TIGHT)


def test_single_class_auroc_is_zero_like_torchdrug_and_nan_grouped(reference):
    case = reference["binary"]["single_class"]
    assert case["auroc"] == 0.0 and case["auprc"] == 0.0
    assert metrics.auroc(case["pred"], case["target"], ties="torchdrug") == 0.0
    assert math.isnan(metrics.auroc(case["pred"], case["target"]))
    assert metrics.auprc_micro(case["pred"], case["target"]) == 0.0


def test_accuracy_matches_torchdrug_and_sklearn_with_tied_maxima(reference):
    case = reference["accuracy"]["ties"]
    pred, target = case["pred"], case["target"]
    tied_rows = (pred == pred.max(dim=1, keepdim=True).values).sum(1) > 1
    assert int(tied_rows.sum()) == 29 and bool((target[tied_rows][::2] == 2).all())
    assert metrics.accuracy(pred, target) == pytest.approx(case["accuracy"], abs=1e-7)
    assert metrics.accuracy(pred, target) == skm.accuracy_score(target.numpy(), pred.numpy().argmax(1))
    assert metrics.accuracy(pred.argmax(1), target) == metrics.accuracy(pred, target)


@pytest.mark.parametrize("name", ["continuous", "ties"])
def test_correlations_match_torchdrug_and_scipy(reference, name):
    case = reference["regression"][name]
    pred, target = case["pred"], case["target"]
    assert metrics.spearman(pred, target) == pytest.approx(case["spearmanr"], abs=FLOAT32)
    assert metrics.pearson(pred, target) == pytest.approx(case["pearsonr"], abs=FLOAT32)
    p, t = pred.double().numpy(), target.double().numpy()
    assert metrics.spearman(pred, target) == stats.spearmanr(p, t).statistic
    assert metrics.pearson(pred, target) == stats.pearsonr(p, t).statistic
    assert metrics.kendall(pred, target) == stats.kendalltau(p, t).statistic


def test_spearman_uses_average_ranks_for_ties(reference):
    case = reference["regression"]["ties"]
    p, t = case["pred"].double().numpy(), case["target"].double().numpy()
    assert len(np.unique(p)) < 20  # heavily tied
    ranks = stats.pearsonr(stats.rankdata(p, method="average"), stats.rankdata(t, method="average")).statistic
    assert metrics.spearman(case["pred"], case["target"]) == pytest.approx(ranks, abs=1e-12)
    ordinal = stats.pearsonr(stats.rankdata(p, method="ordinal"), stats.rankdata(t, method="ordinal")).statistic
    assert abs(metrics.spearman(case["pred"], case["target"]) - ordinal) > 1e-3


def test_constant_prediction_correlations(reference):
    # Documented difference: torchdrug's spearmanr is 0 on a constant input (epsilon-guarded), SciPy and
    # geoplm give NaN; both Pearson correlations are NaN.
    case = reference["regression"]["constant_pred"]
    assert case["spearmanr"] == 0.0 and math.isnan(case["pearsonr"])
    assert math.isnan(metrics.spearman(case["pred"], case["target"]))
    assert math.isnan(metrics.pearson(case["pred"], case["target"]))
    assert math.isnan(metrics.kendall(case["pred"], case["target"]))


# ------------------------------------------------------------------------ definitions and tie handling


def test_fmax_by_hand():
    # Thresholds 0.9 .. 0.1 give F1 0.4, 1/3, 0.25, 0.6, 0.5357, 2/3 (precision over proteins with a
    # prediction, recall over both): Fmax = 2/3 at t = 0.1 (precision (2/3 + 1/3) / 2, recall 1).
    pred = [[0.9, 0.6, 0.1], [0.8, 0.3, 0.2]]
    target = [[1, 0, 1], [0, 1, 0]]
    for ties in metrics.TIES:
        assert metrics.f1_max(pred, target, ties=ties) == pytest.approx(2 / 3, abs=1e-9)
    # A protein without positive labels still counts in the recall average: best at t = 0.9, precision 1
    # (protein 0 only), recall (1 + 0) / 2, F1 2/3 (CAFA, dropping protein 1, would give 1).
    assert metrics.f1_max([[0.9, 0.6], [0.8, 0.3]], [[1, 0], [0, 0]]) == pytest.approx(2 / 3, abs=1e-9)


def test_tie_modes_on_two_tied_scores():
    # A positive and a negative with one score: ranked in index order, the positive comes first.
    assert metrics.f1_max([[0.5, 0.5]], [[1, 0]], ties="stable") == pytest.approx(1.0, abs=1e-9)
    assert metrics.f1_max([[0.5, 0.5]], [[1, 0]], ties="group") == pytest.approx(2 / 3, abs=1e-9)
    assert metrics.auprc_micro([0.5, 0.5], [1, 0], ties="stable") == pytest.approx(1.0, abs=1e-9)
    assert metrics.auprc_micro([0.5, 0.5], [1, 0], ties="group") == 0.5
    assert metrics.auroc([0.5, 0.5], [1, 0], ties="stable") == pytest.approx(1.0, abs=1e-9)
    assert metrics.auroc([0.5, 0.5], [1, 0], ties="group") == 0.5
    assert metrics.auroc([0.5, 0.5], [0, 1], ties="stable") == 0.0


@pytest.mark.parametrize("name", ["hand", "continuous", "rounded", "coarse", "separable", "constant"])
def test_fmax_equals_brute_force(reference, name):
    case = reference["multilabel"][name]
    pred, target = case["pred"].double().numpy(), case["target"].numpy() == 1
    assert metrics.f1_max(case["pred"], case["target"], ties="group") == pytest.approx(
        _fmax_distinct_thresholds(pred, target), abs=1e-12
    )
    assert metrics.f1_max(case["pred"], case["target"], ties="stable") == pytest.approx(
        _fmax_index_order(pred, target), abs=1e-12
    )


def test_tie_free_scores_agree_across_modes_and_with_sklearn(reference):
    case = reference["multilabel"]["continuous"]
    pred, target = case["pred"], case["target"]
    values = {ties: metrics.f1_max(pred, target, ties=ties) for ties in metrics.TIES}
    assert max(values.values()) - min(values.values()) < 1e-12
    flat_pred, flat_target = pred.flatten().numpy(), target.flatten().numpy()
    for ties in ("torchdrug", "stable"):
        assert metrics.auprc_micro(pred, target, ties=ties) == pytest.approx(
            skm.average_precision_score(flat_target, flat_pred), abs=TIGHT
        )
        assert metrics.auroc(pred.flatten(), target.flatten(), ties=ties) == pytest.approx(
            skm.roc_auc_score(flat_target, flat_pred), abs=TIGHT
        )


def test_grouped_ties_equal_sklearn_and_differ_from_torchdrug(reference):
    case = reference["multilabel"]["rounded"]
    pred, target = case["pred"], case["target"]
    flat_pred, flat_target = pred.flatten().double().numpy(), target.flatten().numpy()
    sk_ap = skm.average_precision_score(flat_target, flat_pred)
    sk_auc = skm.roc_auc_score(flat_target, flat_pred)
    assert metrics.auprc_micro(pred, target) == sk_ap
    assert metrics.auroc(pred.flatten(), target.flatten()) == sk_auc
    assert abs(case["auprc_micro_stable"] - sk_ap) > 1e-4
    assert abs(case["auroc_micro_stable"] - sk_auc) > 1e-4


def test_fmax_invariant_to_monotone_transform(reference):
    ml = reference["multilabel"]
    assert ml["continuous"]["f1_max"] == pytest.approx(ml["sigmoid"]["f1_max"], abs=1e-12)
    logits, target = ml["continuous"]["pred"].double(), ml["continuous"]["target"]
    expected = metrics.f1_max(logits, target)
    assert metrics.f1_max(torch.sigmoid(logits), target) == pytest.approx(expected, abs=1e-12)
    assert metrics.f1_max(3 * logits.numpy() ** 3 - 7, target.numpy()) == pytest.approx(expected, abs=1e-12)
    # ... but not to a non-monotone one.
    assert abs(metrics.f1_max(-logits, target) - expected) > 1e-3


def test_inputs_of_any_container_and_dtype_agree(reference):
    case = reference["multilabel"]["coarse"]
    pred, target = case["pred"], case["target"]
    expected = metrics.f1_max(pred, target, ties="stable")
    assert metrics.f1_max(pred.numpy().astype(np.int64), target.bool(), ties="stable") == expected
    assert metrics.f1_max(pred.tolist(), target.long().tolist(), ties="stable") == expected


# ----------------------------------------------------------------------------- per group, first rank loss

GROUP = ["a", "a", "a", "b", "b", "b", "c", "d", "d", "d"]
PRED = [1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 5.0, 1.0, 2.0, 3.0]
TARGET = [1.0, 2.0, 3.0, 3.0, 1.0, 2.0, 4.0, 7.0, 7.0, 7.0]


def test_per_group_spearman_by_hand():
    # a: identical ranks -> 1; b: ranks (1, 2, 3) vs (3, 1, 2) -> 1 - 6 * 6 / (3 * 8) = -0.5;
    # c: one member, below min_size; d: constant target -> NaN, skipped. Mean (1 - 0.5) / 2.
    assert metrics.per_group("spearman", PRED, TARGET, GROUP) == pytest.approx(0.25, abs=1e-12)
    assert metrics.per_group(metrics.spearman, PRED, TARGET, GROUP) == pytest.approx(0.25, abs=1e-12)
    assert math.isnan(metrics.per_group("spearman", PRED, TARGET, GROUP, skip_nan=False))
    # rmse has no NaN: groups a (0), b (sqrt(6 / 3)), d (sqrt((36 + 25 + 16) / 3)); c kept with min_size=1.
    expected = [0.0, math.sqrt(2.0), math.sqrt(77 / 3)]
    assert metrics.per_group("rmse", PRED, TARGET, GROUP) == pytest.approx(np.mean(expected), abs=1e-12)
    assert metrics.per_group("rmse", PRED, TARGET, GROUP, min_size=1) == pytest.approx(
        np.mean(expected + [1.0]), abs=1e-12
    )
    assert math.isnan(metrics.per_group("spearman", PRED, TARGET, GROUP, min_size=4))


@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")
def test_per_group_matches_atom3d_pandas_recipe():
    # ATOM3D's PSR evaluation: groupby target, skip < 3 decoys, Series.corr, NaN-skipping mean.
    rng = np.random.default_rng(0)
    group = rng.integers(0, 12, 200)
    true = rng.normal(size=200)
    pred = np.round(true + rng.normal(size=200), 1)
    pred[group == 3] = 0.5  # a constant prediction: NaN correlation, skipped
    df = pd.DataFrame({"target": group, "true": true, "pred": pred})
    for method in ("spearman", "pearson", "kendall"):
        per_target = [v["true"].corr(v["pred"], method=method) for _, v in df.groupby("target") if len(v) >= 3]
        expected = pd.Series(per_target).mean()
        assert metrics.per_group(method, torch.from_numpy(pred), true, group) == pytest.approx(expected, abs=1e-12)


def test_first_rank_loss_by_hand():
    pred = [0.1, 0.9, 0.5, 2.0, 1.0, 5.0, 5.0]
    target = [0.8, 0.3, 0.6, 0.4, 0.7, 0.1, 0.9]
    group = [0, 0, 0, 1, 1, 2, 2]
    # 0: top pick 0.3, best 0.8 -> 0.5; 1: top 0.4, best 0.7 -> 0.3; 2: tied top, the first (0.1) -> 0.8.
    assert metrics.first_rank_loss(pred, target, group) == pytest.approx((0.5 + 0.3 + 0.8) / 3, abs=1e-12)
    assert metrics.first_rank_loss(target, target, group) == 0.0
    # Group labels only group: strings or shuffled rows give the same value.
    perm = np.random.default_rng(1).permutation(7)
    labels = np.array(["x", "x", "x", "y", "y", "z", "z"])
    shuffled = metrics.first_rank_loss(np.array(pred)[perm], np.array(target)[perm], labels[perm])
    assert shuffled == pytest.approx(metrics.first_rank_loss(pred, target, labels), abs=1e-12)


def test_first_rank_loss_matches_loop():
    rng = np.random.default_rng(2)
    group = rng.integers(0, 9, 150)
    pred, true = np.round(rng.normal(size=150), 0), rng.uniform(size=150)
    losses = [true[group == g].max() - true[group == g][np.argmax(pred[group == g])] for g in np.unique(group)]
    assert metrics.first_rank_loss(pred, true, group) == pytest.approx(np.mean(losses), abs=1e-12)


# ------------------------------------------------------------------------------- registry, regression


def test_registry_names_and_values():
    assert set(metrics.METRICS) == {
        "f1_max",
        "auprc_micro",
        "auroc",
        "accuracy",
        "rmse",
        "mae",
        "spearman",
        "pearson",
        "kendall",
    }
    assert metrics.METRICS["rmse"]([1.0, 2.0], [1.0, 4.0]) == pytest.approx(math.sqrt(2.0), abs=1e-12)
    assert metrics.METRICS["mae"]([1.0, 2.0, 0.0], [1.0, 4.0, 1.0]) == pytest.approx(1.0, abs=1e-12)
    assert metrics.METRICS["accuracy"]([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], [1, 1, 1]) == pytest.approx(2 / 3)


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("fn", "pred", "target"),
    [
        (metrics.f1_max, np.zeros((2, 3)), np.zeros((2, 4))),
        (metrics.f1_max, np.zeros(3), np.zeros(3)),
        (metrics.auprc_micro, np.zeros((2, 3)), np.zeros((3, 2))),
        (metrics.auroc, np.zeros((2, 3)), np.zeros((2, 3))),
        (metrics.rmse, np.zeros(3), np.zeros(4)),
        (metrics.spearman, np.zeros((3, 1)), np.zeros(3)),
        (metrics.accuracy, np.zeros((2, 3)), np.zeros(3)),
    ],
)
def test_shape_mismatch_names_both_shapes(fn, pred, target):
    with pytest.raises(GeoplmError) as error:
        fn(pred, target)
    message = str(error.value)
    assert fn.__name__ in message
    assert str(tuple(pred.shape)) in message and str(tuple(target.shape)) in message


def test_bad_inputs_raise():
    with pytest.raises(GeoplmError, match="empty"):
        metrics.f1_max(np.zeros((0, 3)), np.zeros((0, 3)))
    with pytest.raises(GeoplmError, match="empty"):
        metrics.mae([], [])
    with pytest.raises(GeoplmError, match="binary"):
        metrics.f1_max([[0.1, 0.2]], [[0, 2]])
    with pytest.raises(GeoplmError, match="NaN"):
        metrics.auroc([0.1, float("nan")], [0, 1])
    with pytest.raises(GeoplmError, match="ties"):
        metrics.auroc([0.1, 0.2], [0, 1], ties="average")
    with pytest.raises(GeoplmError, match="at least 2"):
        metrics.pearson([1.0], [2.0])
    with pytest.raises(GeoplmError, match="integer class ids"):
        metrics.accuracy([0.2, 1.0], [0, 1])
    with pytest.raises(GeoplmError, match="numeric"):
        metrics.rmse(["a", "b"], [1.0, 2.0])
    with pytest.raises(GeoplmError, match="unknown metric"):
        metrics.per_group("r2", [1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [0, 0, 0])
    with pytest.raises(GeoplmError, match=r"group has shape \(2,\)"):
        metrics.first_rank_loss([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [0, 0])
