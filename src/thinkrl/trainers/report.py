"""Write a Markdown training report with PNG plots for a run directory.

What it does: reads per-step metrics (`run_dir/metrics.jsonl`, one JSON object per
step), draws one PNG per quantity against `step` into `run_dir/plots/` (rewards,
accuracy with eval points, response length, KL, clip fraction, entropy), and writes
`run_dir/report.md` with a summary table, the plots, and sample completions before
and after training.

What it leaves out: computing metrics (the trainer logs them), interactive display
(plots use matplotlib's Agg renderer through `Figure`, never pyplot), and HTML.
Missing keys, non-numeric values and a truncated last metrics line are skipped.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure


@dataclass
class PlotSpec:
    name: str  # file stem under plots/
    title: str
    ylabel: str
    lines: tuple[str, ...]  # metric keys drawn as lines
    points: tuple[str, ...] = ()  # metric keys drawn as markers (sparse, e.g. eval)


FIXED_PLOTS: tuple[PlotSpec, ...] = (
    PlotSpec("accuracy", "Accuracy", "accuracy", ("accuracy",), ("eval/accuracy",)),
    PlotSpec("length", "Response length", "tokens", ("length/mean", "length/max")),
    PlotSpec("kl", "KL to reference", "KL", ("kl",)),
    PlotSpec("clip_frac", "Clip fraction", "fraction clipped", ("clip_frac",)),
    PlotSpec("entropy", "Policy entropy", "nats / token", ("entropy",)),
)


def read_metrics(path: Path) -> list[dict]:
    """Read a metrics JSONL; skips blank and unparsable lines (a crash may truncate the last)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _series(metrics: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) for `key`; rows without a step use their index."""
    xs, ys = [], []
    for i, row in enumerate(metrics):
        y = _number(row.get(key))
        if y is None:
            continue
        x = _number(row.get("step"))
        xs.append(x if x is not None else float(i))
        ys.append(y)
    return xs, ys


def plot_specs(metrics: list[dict]) -> list[PlotSpec]:
    """The reward plot (every `reward/*` key seen, in first-seen order) plus the fixed plots."""
    reward_keys = list(dict.fromkeys(k for row in metrics for k in row if k.startswith("reward/")))
    specs = [PlotSpec("reward", "Reward", "reward", tuple(reward_keys))] if reward_keys else []
    return specs + list(FIXED_PLOTS)


def make_plots(metrics: list[dict], plot_dir: Path) -> list[tuple[PlotSpec, Path]]:
    """Draw each plot that has data; returns (spec, png path) for those written."""
    written = []
    for spec in plot_specs(metrics):
        lines = [(k, *_series(metrics, k)) for k in spec.lines]
        points = [(k, *_series(metrics, k)) for k in spec.points]
        lines = [s for s in lines if s[1]]
        points = [s for s in points if s[1]]
        if not lines and not points:
            continue
        fig = Figure(figsize=(6, 3.6), dpi=100)
        ax = fig.add_subplot()
        for key, xs, ys in lines:
            ax.plot(xs, ys, label=key, linewidth=1.2)
        for key, xs, ys in points:
            ax.plot(xs, ys, "o--", label=key, markersize=4, linewidth=0.8)
        ax.set(title=spec.title, xlabel="step", ylabel=spec.ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        plot_dir.mkdir(parents=True, exist_ok=True)
        path = plot_dir / f"{spec.name}.png"
        fig.savefig(path)
        written.append((spec, path))
    return written


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def _fence(text: str) -> str:
    """A code fence longer than any backtick run inside `text`."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _samples_md(title: str, samples: list[dict]) -> list[str]:
    out = [f"## {title}", ""]
    for i, s in enumerate(samples, start=1):
        head = f"### Sample {i}"
        if "reward" in s:
            head += f" (reward {_fmt(s['reward'])})"
        out += [head, ""]
        for key, label in (("question", "Question"), ("completion", "Completion")):
            text = str(s.get(key, ""))
            fence = _fence(text)
            out += [f"**{label}:**", "", fence, text, fence, ""]
            if key == "question" and "answer" in s:
                out += [f"**Gold answer:** `{s['answer']}`", ""]
    return out


def write_report(
    run_dir: Path,
    metrics: list[dict] | None = None,
    samples_before: list[dict] | None = None,
    samples_after: list[dict] | None = None,
    summary: dict | None = None,
) -> Path:
    """Write `run_dir/report.md` (and `run_dir/plots/*.png`); returns the report path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if metrics is None:
        metrics = read_metrics(run_dir / "metrics.jsonl")
    plots = make_plots(metrics, run_dir / "plots")

    lines = [f"# Training report: {run_dir.name}", ""]
    if summary:
        lines += ["## Summary", "", "| key | value |", "|---|---|"]
        lines += [f"| {_fmt(k)} | {_fmt(v)} |" for k, v in summary.items()]
        lines.append("")
    lines += ["## Training curves", ""]
    if plots:
        for spec, path in plots:
            rel = path.relative_to(run_dir).as_posix()
            lines += [f"### {spec.title}", "", f"![{spec.title}]({rel})", ""]
    else:
        lines += [f"No metrics to plot ({len(metrics)} rows).", ""]
    if samples_before:
        lines += _samples_md("Samples before training", samples_before)
    if samples_after:
        lines += _samples_md("Samples after training", samples_after)

    report = run_dir / "report.md"
    report.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return report
