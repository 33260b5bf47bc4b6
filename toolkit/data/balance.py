"""Evening out labels in a training set: oversampling (seeded repeats of the rarer labels up
to the commonest label's count), undersampling (a seeded sample of each label down to the
rarest's), or class weights ("balanced", as scikit-learn's compute_class_weight: n / (k * n_c)).
`adaptbench data prepare --balance` writes the repeats into a file; a finetune arm's
`balance:` applies them (or the weights) at training time, where a run's dedup cannot undo them."""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import numpy as np

BALANCE_METHODS = ("oversample", "undersample", "class_weight")


def balance_copies(label_ids: np.ndarray, n_labels: int, method: str, seed: Any) -> np.ndarray:
    """Times each row is kept (0, 1, 2, ...) so every label present has as many rows as the
    commonest one (oversample) or the rarest one (undersample). Rows of a label are taken in
    their order; `seed` seeds numpy's generator (an int or a list of ints)."""
    rows = np.arange(len(label_ids))
    order = rows[np.argsort(label_ids, kind="stable")]
    sizes = np.bincount(label_ids, minlength=n_labels)
    groups = np.split(order, np.cumsum(sizes)[:-1])
    copies = np.ones(len(label_ids), dtype=np.int32)
    if not len(label_ids):
        return copies
    target = int(sizes.max() if method == "oversample" else sizes[sizes > 0].min())
    rng = np.random.default_rng(seed)
    for g in groups:
        if method == "oversample" and 0 < len(g) < target:
            extra = target - len(g)
            copies[g] += extra // len(g)
            copies[rng.choice(g, extra % len(g), replace=False)] += 1
        elif method == "undersample" and len(g) > target:
            copies[rng.choice(g, len(g) - target, replace=False)] = 0
    return copies


def class_weights(labels: Sequence[str]) -> dict[str, float]:
    """label -> n / (k * n_label): every label's examples weigh the same in total."""
    counts = Counter(labels)
    n, k = len(labels), len(counts)
    return {lab: n / (k * c) for lab, c in counts.items()}


def balanced(examples: list, method: str, seed: int) -> tuple[list, dict[str, Any]]:
    """Examples (with labels) over- or undersampled per label, in their order (an oversampled
    example's repeats follow it), and what changed: label -> count before and after."""
    names = sorted({e.label for e in examples})
    ids = np.array([names.index(e.label) for e in examples], dtype=np.int64)
    copies = balance_copies(ids, len(names), method, seed)
    out = [e for e, c in zip(examples, copies) for _ in range(int(c))]
    before, after = Counter(e.label for e in examples), Counter(e.label for e in out)
    return out, {"method": method, "before": dict(sorted(before.items())), "after": dict(sorted(after.items()))}
