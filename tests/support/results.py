"""A paper grid's run folders with made-up results, for the report and TensorBoard tests."""
from harness.config import to_dict

GRID = """\
name: paper
base:
  data: {dataset: cifar10}
grid:
  loss.name: [ce, ldam_drw]
  data.imbalance_factor: [100, 50, 10]
  seed: [0, 1, 2]
"""
# final top-1 per (loss, IF) and seed; None: the folder is absent; "failed": the run failed
FINAL = {
    ("ce", 10): [86.0, 87.0, 88.0],
    ("ce", 50): [75.0, 75.0, 75.0],
    ("ce", 100): [70.0, "failed", 72.0],
    ("ldam_drw", 10): [88.0, 88.0, 88.0],
    ("ldam_drw", 50): [None, None, None],
    ("ldam_drw", 100): [77.0, 76.0, None],
}


def result_for(cell, top1: float) -> dict:
    """A result.json as the trainer writes it: best = final + 1, groups around top-1."""
    groups = {"many": top1 + 10, "medium": top1, "few": top1 - 20}
    return {"signature": cell.signature, "status": "finished", "config": to_dict(cell.config),
            "epochs": 200, "eval_split": "test", "class_counts": [5000, 50],
            "final": {"top1": top1, **groups},
            "best": {"epoch": 190, "top1": top1 + 1, **{k: v + 1 for k, v in groups.items()}},
            "per_class": [top1, top1], "history": []}
