"""Produce tests/fixtures/torchdrug_metrics.pt: torchdrug 0.2.1 metric values for tests/test_metrics.py.

Run once, in the torchdrug environment (benchmarks/torchdrug_env.sh), from the repository root::

    bash benchmarks/torchdrug_env.sh /work/tdenv
    /work/tdenv/bin/python benchmarks/torchdrug_metrics_reference.py [--out tests/fixtures/torchdrug_metrics.pt]

Nothing here is imported by the tests: they only read the fixture (``torch.load(..., weights_only=True)``), so
CI needs no torchdrug.

Inputs are drawn from ``torch.Generator().manual_seed(SEED)`` and stored as they were given to torchdrug:
scores float32 (as a model outputs them, so torchdrug sorts float32 exactly as in training), targets float64
(so torchdrug's precision/recall arithmetic runs in float64 and the comparison is not limited by float32
rounding) except in the ``long_target`` case, which passes ``target.long()`` as torchdrug's
``MultipleBinaryClassification.evaluate`` does for ``auprc@micro``.

Cases (``multilabel``: ``(N, C)``, for ``f1_max`` and, flattened, ``area_under_prc`` / ``area_under_roc``):

* ``hand``: the 2 x 3 example of the tests (Fmax 2/3).
* ``continuous``: 64 x 48 logits ``N(0, 1) + 1.5 * label``, ~8 % positives; protein 0 has no positive label,
  protein 1 only negative logits, protein 2 only positive labels; no tied scores (asserted).
* ``sigmoid``: ``sigmoid`` of the ``continuous`` logits (same ranking; no ties, asserted).
* ``rounded``: the logits rounded to 0.1 (heavy ties within and across proteins), same special rows.
* ``coarse``: 30 x 20 integer scores 0..3 with correlated labels (ties everywhere).
* ``separable``: 30 x 20 integer scores, positives 2..3 and negatives 0..1 (every ranking metric is 1).
* ``constant``: a 5 x 5 matrix of 0.5, term 0 positive for every protein: torch's default CPU sort of the 25
  scores does not start with a protein's first term, and torchdrug's ``f1_max`` is NaN.
* ``long_target``: the ``rounded`` scores with an int64 target.

``binary`` (``(N,)``, ``area_under_roc`` / ``area_under_prc``): ``continuous`` (500 scores ``N(label, 1)``),
``rounded`` (rounded to 0.5), ``single_class`` (no positive label).
``accuracy``: 200 x 5 logits, every 7th row with a tie for the maximum between classes 0 and 2, int64 target.
``regression`` (``spearmanr`` / ``pearsonr``): ``continuous`` (300 correlated normals), ``ties`` (both times 2
rounded to integers), ``constant_pred``.

Every ranking value is computed twice: with torch's default ``argsort`` (unstable on the CPU: for more than 16
elements tied scores come out in an implementation-defined order), stored under the metric's name, and with
``Tensor.argsort`` patched to ``stable=True`` (ties in index order), stored as ``<name>_stable``. Each
multilabel / binary case also stores the SHA-256 of the permutations torch's default ``argsort`` gave
(``row_order_sha256`` of ``pred.argsort(descending=True, dim=1)``, ``flat_order_sha256`` of
``pred.flatten().argsort(descending=True)``, as int64 bytes), so the tests can check that the torch they run
orders ties the same way before comparing tie-dependent values.

Fixture layout (plain tensors / dicts / str / float only): ``meta`` (versions, seed, script name),
``multilabel``, ``binary``, ``accuracy``, ``regression``: dicts of case name -> dict with ``pred``, ``target``
and the torchdrug values (Python floats; NaN where torchdrug returns NaN).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import sys
from pathlib import Path

import torch
from fixture_io import write_fixture

SEED = 0


@contextlib.contextmanager
def stable_argsort():
    """Make ``Tensor.argsort`` (which torchdrug's metrics call) sort stably: ties keep their index order."""
    original = torch.Tensor.argsort

    def argsort(self, dim=-1, descending=False, stable=False):
        return torch.sort(self, dim=dim, descending=descending, stable=True).indices

    torch.Tensor.argsort = argsort
    try:
        yield
    finally:
        torch.Tensor.argsort = original


def sha256(order: torch.Tensor) -> str:
    return hashlib.sha256(order.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


def value(x) -> float:
    return float(x)


def ranking_values(fn, *args) -> tuple[float, float]:
    """``fn(*args)`` with torch's default argsort and with a stable one."""
    default = value(fn(*args))
    with stable_argsort():
        stable = value(fn(*args))
    return default, stable


def multilabel_cases(g: torch.Generator) -> dict:
    n, c = 64, 48
    target = (torch.rand(n, c, generator=g) < 0.08).double()
    logits = torch.randn(n, c, generator=g) + 1.5 * target.float()  # informative scores
    target[0] = 0  # a protein without any positive label
    logits[1] = -logits[1].abs() - 0.1  # a protein with only negative logits
    target[2] = 1  # a protein whose every term is positive
    rounded = torch.round(logits * 10) / 10
    coarse_target = (torch.rand(30, 20, generator=g) < 0.3).double()
    coarse = (coarse_target + torch.randint(0, 3, (30, 20), generator=g)).float()  # 0..3, ties everywhere
    separable = coarse_target * 2 + torch.randint(0, 2, (30, 20), generator=g)  # positives 2..3, negatives 0..1
    constant_target = torch.zeros(5, 5, dtype=torch.float64)
    constant_target[:, 0] = 1
    cases = {
        "hand": (torch.tensor([[0.9, 0.6, 0.1], [0.8, 0.3, 0.2]]), torch.tensor([[1.0, 0, 1], [0, 1, 0]]).double()),
        "continuous": (logits, target),
        "sigmoid": (torch.sigmoid(logits), target),
        "rounded": (rounded, target),
        "coarse": (coarse, coarse_target),
        "separable": (separable.float(), coarse_target),
        "constant": (torch.full((5, 5), 0.5), constant_target),
        "long_target": (rounded, target.long()),
    }
    for name in ("continuous", "sigmoid"):
        pred = cases[name][0]
        assert pred.unique().numel() == pred.numel(), f"{name}: tied scores"
    return cases


def binary_cases(g: torch.Generator) -> dict:
    target = (torch.rand(500, generator=g) < 0.3).double()
    score = torch.randn(500, generator=g) + target
    return {
        "continuous": (score, target),
        "rounded": (torch.round(score * 2) / 2, target),
        "single_class": (score[:50].clone(), torch.zeros(50, dtype=torch.float64)),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="tests/fixtures/torchdrug_metrics.pt", type=Path)
    args = parser.parse_args(argv)

    import torchdrug
    from torchdrug import metrics

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(SEED)

    multilabel = {}
    for name, (pred, target) in multilabel_cases(g).items():
        entry = {"pred": pred.contiguous(), "target": target.contiguous()}
        entry["f1_max"], entry["f1_max_stable"] = ranking_values(metrics.f1_max, pred, target)
        flat_pred, flat_target = pred.flatten(), target.flatten()
        entry["auprc_micro"], entry["auprc_micro_stable"] = ranking_values(
            metrics.area_under_prc, flat_pred, flat_target
        )
        entry["auroc_micro"], entry["auroc_micro_stable"] = ranking_values(
            metrics.area_under_roc, flat_pred, flat_target
        )
        entry["row_order_sha256"] = sha256(pred.argsort(descending=True, dim=1))
        entry["flat_order_sha256"] = sha256(pred.flatten().argsort(descending=True))
        multilabel[name] = entry
        print(
            f"multilabel {name:12s} {tuple(pred.shape)}: f1_max {entry['f1_max']:.6f} "
            f"(stable {entry['f1_max_stable']:.6f}), auprc {entry['auprc_micro']:.6f} "
            f"(stable {entry['auprc_micro_stable']:.6f}), auroc {entry['auroc_micro']:.6f} "
            f"(stable {entry['auroc_micro_stable']:.6f})"
        )

    binary = {}
    for name, (pred, target) in binary_cases(g).items():
        entry = {"pred": pred, "target": target}
        entry["auroc"], entry["auroc_stable"] = ranking_values(metrics.area_under_roc, pred, target)
        entry["auprc"], entry["auprc_stable"] = ranking_values(metrics.area_under_prc, pred, target)
        entry["flat_order_sha256"] = sha256(pred.argsort(descending=True))
        binary[name] = entry
        print(
            f"binary {name:12s}: auroc {entry['auroc']:.6f} (stable {entry['auroc_stable']:.6f}), "
            f"auprc {entry['auprc']:.6f} (stable {entry['auprc_stable']:.6f})"
        )

    logits = torch.randn(200, 5, generator=g)
    logits[::7, 2] = logits[::7, 0] = logits[::7].max(dim=1).values + 0.5  # tie for the maximum: classes 0, 2
    labels = torch.randint(0, 5, (200,), generator=g)
    labels[::14] = 2  # half the tied rows are labelled with the second of the tied classes
    accuracy = {"ties": {"pred": logits, "target": labels, "accuracy": value(metrics.accuracy(logits, labels))}}
    print(f"accuracy ties: {accuracy['ties']['accuracy']:.6f}")

    x = torch.randn(300, generator=g)
    y = 0.6 * x + 0.8 * torch.randn(300, generator=g)
    regression = {}
    for name, (pred, target) in {
        "continuous": (x, y),
        "ties": (torch.round(x * 2), torch.round(y * 2)),
        "constant_pred": (torch.full((300,), 0.25), y),
    }.items():
        entry = {"pred": pred, "target": target}
        entry["spearmanr"] = value(metrics.spearmanr(pred, target))
        entry["pearsonr"] = value(metrics.pearsonr(pred, target))
        regression[name] = entry
        print(f"regression {name:14s}: spearmanr {entry['spearmanr']:.6f}, pearsonr {entry['pearsonr']:.6f}")

    fixture = {
        "meta": {
            "script": "benchmarks/torchdrug_metrics_reference.py",
            "torchdrug": str(torchdrug.__version__),
            "torch": str(torch.__version__),
            "python": sys.version.split()[0],
            "seed": SEED,
        },
        "multilabel": multilabel,
        "binary": binary,
        "accuracy": accuracy,
        "regression": regression,
    }
    write_fixture(fixture, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
