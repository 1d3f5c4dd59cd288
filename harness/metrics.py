"""The metrics a run reports, named once: top-1 and the shot groups' accuracy on a balanced set.

    summary = summarize(confusion, counts)   # {"top1", "per_class", "many", "medium", "few", "confusion"}

`confusion[i][j]` counts test images of class i predicted as j; `counts[c]` is the number of
training images of class c, which puts the class in a shot group (the convention of Liu et al.
2019 that LDAM-DRW and later papers report): many > 100, medium 20..100, few < 20.
"""
from __future__ import annotations

METRICS = ("top1", "many", "medium", "few")
"""What a result reports per epoch and at the end (%, on the balanced evaluation set)."""
GROUPS = ("many", "medium", "few")


def shot_group(count: int) -> str:
    """many: > 100 training images; medium: 20..100; few: < 20."""
    if count > 100:
        return "many"
    if count >= 20:
        return "medium"
    return "few"


def summarize(confusion: list[list[float]], counts: list[int]) -> dict:
    """Top-1, per-class accuracy and each shot group's mean per-class accuracy (None when the
    group has no class), all in %, from a confusion matrix of counts."""
    correct = [row[i] for i, row in enumerate(confusion)]
    totals = [sum(row) for row in confusion]
    per_class = [100.0 * c / t if t else 0.0 for c, t in zip(correct, totals)]
    out = {"top1": 100.0 * sum(correct) / max(sum(totals), 1), "per_class": per_class,
           "confusion": [[int(v) for v in row] for row in confusion]}
    groups = [shot_group(n) for n in counts]
    for group in GROUPS:
        accs = [a for a, g in zip(per_class, groups) if g == group]
        out[group] = sum(accs) / len(accs) if accs else None
    return out
