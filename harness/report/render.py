"""A table as Markdown, CSV and a plot of top-1 against the imbalance factor."""
from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path

from harness.files import atomic_path
from harness.grid import axis_name
from harness.metrics import GROUPS, METRICS
from harness.report.runs import axes_key, unique
from harness.report.table import Table, _norm, _sort_key, label, value

WHICH = {"final": "final epoch",
         "best": "best epoch (the epoch of highest test top-1 in each run; optimistic, as LDAM-DRW reports)"}


def _md(header: list, body: list) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(line) + " |" for line in body)]


def top1_lines(t: Table) -> list[str]:
    pub = t.published_cols()
    header = [" / ".join(axis_name(k) for k in t.row_keys)]
    for cv in t.col_values:
        header.append(t.col_label(cv))
        if _norm(t.col_label(cv)) in pub:
            header.append(f"{t.col_label(cv)} (published)")
    body = []
    for rv in t.row_values:
        line = [t.row_label(rv)]
        for cv in t.col_values:
            line.append(t.stat(rv, cv, "top1").text())
            if _norm(t.col_label(cv)) in pub:
                p = t.published_for(rv, cv)
                line.append("—" if p is None else f"{p:.1f}")
        body.append(line)
    return _md(header, body)


def groups_lines(t: Table) -> list[str]:
    header = [" / ".join(axis_name(k) for k in t.row_keys)]
    header += [f"{t.col_label(cv)} {g}" for cv in t.col_values for g in GROUPS]
    body = [[t.row_label(rv), *(t.stat(rv, cv, g).text() for cv in t.col_values for g in GROUPS)]
            for rv in t.row_values]
    return _md(header, body)


def unfinished_lines(rows: list[dict]) -> list[str]:
    body = []
    for r in sorted(rows, key=lambda r: [_sort_key(v) for v in r["axes"].values()]):
        if r["result"]:
            continue
        axes = " ".join(f"{axis_name(k)}={v}" for k, v in r["axes"].items())
        error = (r["state"].get("error") or "").replace("|", "/")[:80]
        body.append([axes, r["signature"], r["state"]["state"], error])
    return _md(["cell", "signature", "state", "error"], body) if body else ["every run finished"]


def markdown(t: Table, rows: list[dict], title: str) -> str:
    n_seeds = len(unique(r["axes"].get("seed", r["config"].get("seed")) for r in rows))
    splits = sorted({r["result"].get("eval_split", "test") for r in rows if r["result"]}) or ["test"]
    lines = [f"# {title}", "",
             f"Top-1 accuracy (%) on the balanced {'/'.join(splits)} set, **{WHICH[t.which]}**; "
             f"mean ± sample std over {n_seeds} seed(s).", "", *top1_lines(t), "",
             "`(k/n)`: only k of the n runs of this cell finished; `—`: none did."]
    if t.published:
        lines += [f"Published numbers: {t.source}."]
    lines += ["", f"## Many / medium / few-shot accuracy (%), {t.which} epoch", "",
              "many: > 100 training images, medium: 20-100, few: < 20; n/a: no class of that kind.", "",
              *groups_lines(t), "", "## Runs not finished", "", *unfinished_lines(rows), ""]
    return "\n".join(lines)


def csv_text(t: Table) -> str:
    """One line per (row, column, metric): mean, std, runs finished, runs expected, published."""
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow([*(axis_name(k) for k in t.row_keys), *(axis_name(k) for k in t.col_keys),
                "which", "metric", "mean", "std", "finished", "expected", "published"])
    for rv in t.row_values:
        for cv in t.col_values:
            for m in METRICS:
                s = t.stat(rv, cv, m)
                pub = t.published_for(rv, cv) if m == "top1" else None
                w.writerow([*rv, *cv, t.which, m, _num(s.mean), _num(s.std), s.done, s.expected, _num(pub)])
    return out.getvalue()


def _num(v) -> str:
    return "" if v is None else f"{v:.4f}"


def plot(rows: list[dict], t: Table, path: Path) -> None:
    """Top-1 against the imbalance factor (log scale), one line per row (loss), one panel per dataset."""
    from matplotlib.figure import Figure
    done = [r for r in rows if r["result"]]
    datasets = sorted(unique(value(r, "data.dataset") for r in rows), key=str)
    fig = Figure(figsize=(5 * len(datasets), 4), dpi=110)
    axes = fig.subplots(1, len(datasets), squeeze=False)[0]
    others = [k for k in t.col_keys if k not in ("data.dataset", "data.imbalance_factor")]
    for ax, dataset in zip(axes, datasets):
        lines = {}
        for r in done:
            if value(r, "data.dataset") != dataset:
                continue
            name = ", ".join([t.row_label(tuple(value(r, k) for k in t.row_keys)),
                              *(label(k, value(r, k)) for k in others)])
            x = float(value(r, "data.imbalance_factor"))
            lines.setdefault(name, {}).setdefault(x, []).append(r["result"][t.which]["top1"])
        colours = {}
        for name, points in sorted(lines.items()):
            xs = sorted(points)
            means = [statistics.fmean(points[x]) for x in xs]
            stds = [statistics.stdev(points[x]) if len(points[x]) > 1 else 0.0 for x in xs]
            bars = ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=name)
            colours[name] = bars.lines[0].get_color()
        published = _published_points(t, dataset, others)
        for name, points in sorted(published.items()):
            ax.scatter(*zip(*points), marker="x", s=60, color=colours.get(name, "black"), label=f"{name} (published)")
        ax.set_xscale("log")
        ticks = sorted({x for points in lines.values() for x in points}
                       | {x for points in published.values() for x, _ in points})
        ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
        ax.minorticks_off()
        ax.set_xlabel("imbalance factor")
        ax.set_ylabel(f"top-1 (%), {t.which} epoch")
        ax.set_title(label("data.dataset", dataset))
        ax.grid(alpha=0.3)
        if lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def _published_points(t: Table, dataset, others: list) -> dict:
    """{line name: [(imbalance factor, published top-1)]} for one dataset's panel."""
    points = {}
    for rv in t.row_values:
        for cv in t.col_values:
            number, runs = t.published_for(rv, cv), t.cells.get((axes_key(rv), axes_key(cv)))
            if number is None or not runs or value(runs[0], "data.dataset") != dataset:
                continue
            name = ", ".join([t.row_label(rv), *(label(k, value(runs[0], k)) for k in others)])
            points.setdefault(name, []).append((float(value(runs[0], "data.imbalance_factor")), number))
    return points


# ---------------------------------------------------------------------------------------
# the command
