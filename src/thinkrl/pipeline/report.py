"""The report of `thinkrl pipeline`: every stage on the same evaluation, the analogue of R1's stage table.

Writes into the pipeline's output directory (each file to a temp name, then renamed):
- `report.json`: stage name -> summary (kind, from, pass@1, cons@K, mean / p90 length,
  format, truncated, params, compute seconds, ...; data stages carry their sampling stats
  and `"eval": null`);
- `report.md`: the stage table in pipeline order, the requested side-by-side comparisons
  (`compare:` pairs, with Δ pass@1), the plots, links to each stage's own files;
- `plots/stages_accuracy.png` (pass@1 and cons@K per stage), `plots/stages_length.png`
  (mean and p90 response length per stage);
- `pipeline_runs.jsonl`: one line appended per invocation: wall time, peak RSS, what it did
  per stage (ran, resumed, evaluated, skipped) and how long that took.
Left out: per-step training curves (each grpo stage's own `run/report.md` has them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from matplotlib.figure import Figure

from thinkrl.trainers.metrics import JsonlLog

__all__ = ["stage_summary", "write_pipeline_report"]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def stage_summary(rec: dict) -> dict:
    """One report.json entry from a done stage record."""
    out = {"kind": rec["kind"], "from": rec.get("from", ""), "note": rec.get("note", "")}
    ev = rec.get("eval")
    if ev:
        out.update(ev)
    else:
        out["eval"] = None
        out.update(rec.get("summary", {}))
    for k in ("train_seconds", "wall_seconds", "cpu_seconds", "eval_seconds"):
        out[k] = rec.get(k)
    out["details"] = rec.get("summary", {})  # kind-specific: steps, losses, teacher samples, ...
    return out


def _num(v, fmt: str = ".3f") -> str:
    return "—" if v is None else format(v, fmt)


def _table(names: list[str], summaries: dict[str, dict], k: int) -> list[str]:
    lines = [f"| stage | kind | from | params | pass@1 | cons@{k} | mean len | format | train s | CPU s | what |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name in names:
        s = summaries[name]
        params = f"{s['params'] / 1e6:.2f}M" if s.get("params") else "—"
        lines.append(f"| {name} | {s['kind']} | {s['from'] or '—'} | {params} | {_num(s.get('pass@1'))} | "
                     f"{_num(s.get('cons@k'))} | {_num(s.get('mean_length'), '.1f')} | {_num(s.get('format'))} | "
                     f"{_num(s.get('train_seconds'), '.0f')} | {_num(s.get('cpu_seconds'), '.0f')} | "
                     f"{s.get('note', '')} |")
    return lines


def _bars(path: Path, names: list[str], series: dict[str, list[float]], title: str, ylabel: str) -> None:
    fig = Figure(figsize=(max(6.0, 0.7 * len(names) + 2), 3.8), dpi=100)
    ax = fig.add_subplot()
    width = 0.8 / max(len(series), 1)
    for j, (label, values) in enumerate(series.items()):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(names))]
        ax.bar(xs, values, width, label=label)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set(title=title, ylabel=ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def _comparison(a: str, b: str, summaries: dict[str, dict], k: int) -> list[str]:
    sa, sb = summaries[a], summaries[b]
    lines = [f"### {a} vs {b}", ""] + _table([a, b], summaries, k)
    if sa.get("pass@1") is not None and sb.get("pass@1") is not None:
        lines += ["", f"Δ pass@1 ({a} − {b}): {sa['pass@1'] - sb['pass@1']:+.3f}; training seconds "
                      f"{_num(sa.get('train_seconds'), '.0f')} vs {_num(sb.get('train_seconds'), '.0f')}."]
    return lines + [""]


def write_pipeline_report(out: Path, p, records: dict[str, dict], run_info: dict) -> Path:
    """report.json, report.md, plots/ and a line of pipeline_runs.jsonl in `out`; returns report.md's path."""
    out = Path(out)
    names = [s.name for s in p.stages if s.name in records]
    summaries = {n: stage_summary(records[n]) for n in names}
    _write_atomic(out / "report.json", json.dumps(summaries, indent=2) + "\n")
    JsonlLog(out / "pipeline_runs.jsonl").write(run_info)

    k = p.eval.samples
    evaluated = [n for n in names if summaries[n].get("pass@1") is not None]
    plots = []
    if evaluated:
        acc, length = out / "plots" / "stages_accuracy.png", out / "plots" / "stages_length.png"
        _bars(acc, evaluated, {"pass@1": [summaries[n]["pass@1"] for n in evaluated],
                               f"cons@{k}": [summaries[n]["cons@k"] for n in evaluated]},
              "Held-out accuracy after each stage", "accuracy")
        _bars(length, evaluated, {"mean": [summaries[n]["mean_length"] for n in evaluated],
                                  "p90": [summaries[n]["p90_length"] for n in evaluated]},
              "Response length after each stage", "tokens")
        plots = [("Accuracy", acc), ("Response length", length)]

    lines = [f"# Pipeline report: {out.name}", "",
             f"Task `{p.dataset}` (template {p.template}); every model evaluated on the same {p.eval.problems} "
             f"held-out problems x {k} samples at temperature {p.eval.temperature} / top-p {p.eval.top_p}, "
             f"at most {p.eval.max_new_tokens} new tokens. pass@1 = mean correctness over the samples, "
             f"cons@{k} = majority vote. `train s` = seconds spent producing the stage's output (teacher "
             f"sampling included, evaluations excluded); `CPU s` = CPU seconds of the whole stage.", "",
             "## Stages", ""]
    lines += _table(names, summaries, k) + [""]
    if p.compare:
        lines += ["## Comparisons", ""]
        for a, b in p.compare:
            lines += _comparison(a, b, summaries, k)
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{title}]({path.relative_to(out).as_posix()})\n" for title, path in plots]
    built = sum((records[n].get("wall_seconds") or 0) + (records[n].get("eval_seconds") or 0) for n in names)
    lines += ["## This run", "",
              f"This invocation: wall time {run_info['wall_seconds']:.0f} s, peak RSS {run_info['peak_rss_gib']:.2f} "
              f"GiB (every invocation: `pipeline_runs.jsonl`). The stages took {built:.0f} s in all when they ran "
              f"(training and evaluation).", "",
              "| stage | this run | files |", "|---|---|---|"]
    lines += [f"| {n} | {run_info['stages'].get(n, '—')} | [{n}/]({n}/) |" for n in names]
    report = out / "report.md"
    _write_atomic(report, "\n".join(lines) + "\n")
    return report
