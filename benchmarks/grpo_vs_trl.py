"""thinkrl vs TRL GRPOTrainer, side by side on this machine, alternating, one process per run.

    pip install -e '.[bench]'            # TRL 1.16 (never imported by thinkrl itself)
    python benchmarks/grpo_vs_trl.py      # all CPU settings, ~20 minutes on 2 cores
    python benchmarks/grpo_vs_trl.py --settings tiny,smollm2-64 --json out.json
    python benchmarks/grpo_vs_trl.py --save   # also one file per setting: results/<machine>/<setting>.json

For each setting (see bench_common.SETTINGS: same weights, prompts, B, G, max new tokens,
temperature, lr, β = 0, μ = 1, precision), thinkrl and TRL each run in a fresh process
(its own peak RSS), both alive at once and in lockstep: step i of one, then step i of the
other (which goes first flips from step to step), never two at once; each does its warm-up
steps and then the measured steps (SmolLM2: 1 and 3; the tiny model: 3 and 10). A shared
or throttled machine changes speed within minutes (this project's VM: the same tiny-model
run 0.14 to 0.34 s a step within one minute), so steps taken seconds apart are compared: the
step-time ratio is the median over the measured steps of step i's ratio. Both processes hold
their memory at once (on a GPU too: thinkrl's and TRL's peaks must fit together); --sequential
runs one tool's worker after the other instead (the ratio of their median steps).
Printed: per-phase seconds (sample / reward+score / train), generation tokens/s, training
GFLOP/s (6·params·tokens actually processed / train time) and its share of the matrix-
product peak the worker measured after its steps, peak RSS; then the ratios; the last
line is the SmolLM2 1×8×128 fp32 pair. With --save, each setting's pair (both tools, their
ratios, and in "meta" the commit, date and the command that reproduces it) goes to
benchmarks/results/<machine>/<setting>.json, <machine> as machine_name() spells it; the
committed files there are the latest accepted run (RESULTS.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_common import SETTINGS, matmul_peak, peak_for  # noqa: E402

CPU_DEFAULT = "smollm2-128,smollm2-128-whole,smollm2-64,smollm2-B4,smollm2-128-bf16,tiny,tiny-bf16"
RESULTS = HERE / "results"


def machine_name(device: str) -> str:
    """The folder under benchmarks/results/ for this machine: cpu-<torch's ISA>-<CPU family>-<N>core
    (e.g. cpu-avx512-epyc-2core), or gpu-<model> on CUDA (e.g. gpu-h100)."""
    import torch

    if device.startswith("cuda"):
        words = torch.cuda.get_device_name(device).lower().replace("nvidia", "").split()
        return "gpu-" + next((w for w in words if any(c.isdigit() for c in w)), "-".join(words) or "unknown")
    try:
        model = next(line.split(":", 1)[1] for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = ""
    words = [w for w in re.sub(r"\(\w+\)", " ", model).lower().split() if w not in ("amd", "intel", "cpu")]
    family = re.sub(r"[^a-z0-9]+", "", words[0]) if words else platform.machine().lower()
    return f"cpu-{torch.backends.cpu.get_cpu_capability().lower()}-{family}-{os.cpu_count()}core"


def git_commit() -> dict:
    """HEAD's short hash, and whether tracked files outside benchmarks/results differ from it."""
    git = lambda *args: subprocess.run(["git", *args], cwd=HERE.parent, capture_output=True, text=True)  # noqa: E731
    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("diff", "--quiet", "HEAD", "--", ".", ":(exclude)benchmarks/results").returncode == 1
    except OSError:  # no git
        return {"commit": None}
    return {"commit": head.stdout.strip() or None, "dirty": dirty}


def _worker_cmd(tool: str, setting: str, device: str) -> list[str]:
    return [sys.executable, str(HERE / "bench_worker.py"), "--tool", tool, "--setting", setting, "--device", device]


def _result(tool: str, setting: str, records: list[dict], wall: float, rc: int | None, log: str) -> dict:
    """One tool's result from its worker's BENCH records: medians of the measured steps, the summary."""
    if rc != 0 or not any(r.get("summary") for r in records):
        return {"tool": tool, "setting": setting, "error": f"exit {rc}: {log[-3000:]}"}
    steps = [r for r in records if "step" in r and not r["warmup"]]
    summary = next(r for r in records if r.get("summary"))
    gpu = next((r for r in records if r.get("summary_gpu")), {})
    med = lambda k: statistics.median(r[k] for r in steps)  # noqa: E731
    return {
        "tool": tool, "setting": setting, "wall_s": wall, "steps": steps,
        "step_s": med("step_s"), "sample_s": med("sample_s"), "score_s": med("score_s"), "train_s": med("train_s"),
        "gen_tok_s": med("gen_tokens") / med("sample_s"), "page_faults": med("page_faults"),
        "train_gflops": 6 * summary["params"] * med("train_tokens") / med("train_s") / 1e9,
        "peak_rss_gib": summary["peak_rss_gib"], "gpu_peak_gib": gpu.get("gpu_peak_gib"),
        "worker_matmul_peak": summary.get("matmul_peak_gflops"),
        "params": summary["params"], "versions": summary["versions"],
    }


def run_worker(tool: str, setting: str, device: str, timeout: int) -> dict:
    """--sequential: one tool's worker alone, all its steps in one go."""
    t = time.time()
    proc = subprocess.run(_worker_cmd(tool, setting, device), capture_output=True, text=True, timeout=timeout)
    records = [json.loads(line[6:]) for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
    return {**_result(tool, setting, records, time.time() - t, proc.returncode, proc.stderr or proc.stdout),
            "protocol": "sequential"}


def run_lockstep(order: tuple[str, str], setting: str, device: str, timeout: int) -> list[dict]:
    """Both tools' workers alive at once, one stepping at a time: step i of each runs back to back
    (the first tool flipping from step to step), then each one's summary in turn, so a slow phase
    of a shared machine lands on both tools' step i alike. Returns both results, in `order`."""
    s = SETTINGS[setting]
    t = time.time()
    logs = {tool: tempfile.TemporaryFile("w+") for tool in order}  # stderr: a file, so no pipe fills up
    procs = {tool: subprocess.Popen(_worker_cmd(tool, setting, device) + ["--lockstep"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=logs[tool], text=True) for tool in order}
    records: dict[str, list[dict]] = {tool: [] for tool in order}
    watchdog = threading.Timer(timeout, lambda: [p.kill() for p in procs.values()])
    watchdog.start()
    try:
        for i in range(s.warmup + s.steps + 1):  # the last round: the summaries
            for tool in order if i % 2 == 0 else order[::-1]:
                p = procs[tool]
                if p.poll() is not None:
                    continue
                try:
                    p.stdin.write("go\n")
                    p.stdin.flush()
                except BrokenPipeError:  # it has just exited: its result says how
                    continue
                for line in p.stdout:  # up to this turn's record (a step, or the summary)
                    if line.startswith("BENCH "):
                        records[tool].append(json.loads(line[6:]))
                        if records[tool][-1].get("summary") or "step" in records[tool][-1]:
                            break
        out = []
        for tool in order:
            p = procs[tool]
            p.stdin.close()
            rest = p.stdout.read()  # e.g. the GPU summary
            records[tool] += [json.loads(line[6:]) for line in rest.splitlines() if line.startswith("BENCH ")]
            rc = p.wait()
            logs[tool].seek(0)
            out.append({**_result(tool, setting, records[tool], time.time() - t, rc, logs[tool].read()),
                        "protocol": "lockstep"})
        return out
    finally:
        watchdog.cancel()
        for p in procs.values():
            if p.poll() is None:
                p.kill()


def _pct(r: dict) -> str:
    """Training GFLOP/s as a share of the matmul peak the same worker measured after its steps."""
    peak = peak_for(r.get("worker_matmul_peak") or {}, SETTINGS[r["setting"]].precision)
    return f"{100 * r['train_gflops'] / peak:.0f}%" if peak else "-"


def table(results: list[dict]) -> str:
    head = f"{'setting':24s} {'tool':8s} {'step s':>7s} {'sample':>7s} {'rew+sc':>7s} {'train':>7s} " \
           f"{'gen tok/s':>9s} {'trainGF/s':>9s} {'% peak':>6s} {'RSS GiB':>8s}"
    lines = [head, "-" * len(head)]
    for r in results:
        if "error" in r:
            lines.append(f"{r['setting']:24s} {r['tool']:8s} ERROR {r['error'][-300:]!r}")
            continue
        gpu = f" (GPU {r['gpu_peak_gib']:.1f})" if r.get("gpu_peak_gib") else ""
        lines.append(f"{r['setting']:24s} {r['tool']:8s} {r['step_s']:7.2f} {r['sample_s']:7.2f} {r['score_s']:7.2f} "
                     f"{r['train_s']:7.2f} {r['gen_tok_s']:9.0f} {r['train_gflops']:9.0f} {_pct(r):>6s} "
                     f"{r['peak_rss_gib']:8.2f}{gpu}")
    return "\n".join(lines)


def ratios(results: list[dict]) -> dict[str, dict]:
    by = {(r["setting"], r["tool"]): r for r in results if "error" not in r}
    out = {}
    for setting in dict.fromkeys(r["setting"] for r in results):
        a, b = by.get((setting, "thinkrl")), by.get((setting, "trl"))
        if a and b:
            out[setting] = {"step_time": a["step_s"] / b["step_s"], "peak_rss": a["peak_rss_gib"] / b["peak_rss_gib"]}
            pairs = step_pairs(a, b)
            if pairs:  # lockstep: the median of step i's ratios, each pair run back to back
                out[setting].update(step_time=statistics.median(pairs), step_time_of_medians=out[setting]["step_time"],
                                    step_pairs=pairs)
    for model in ("smollm2", "tiny"):  # each tool in its fastest mode (full fine-tuning: LoRA is another job)
        def fastest_mode(s: str, model=model) -> bool:
            c = SETTINGS[s]
            return c.model == model and c.prompts_per_step == 1 and not c.lora_r and \
                c.max_new_tokens == (128 if model == "smollm2" else 64)
        mine = [r for (s, t), r in by.items() if t == "thinkrl" and fastest_mode(s)]
        theirs = [r for (s, t), r in by.items() if t == "trl" and fastest_mode(s)]
        if mine and theirs:
            fa, fb = min(mine, key=lambda r: r["step_s"]), min(theirs, key=lambda r: r["step_s"])
            same = fa["setting"] == fb["setting"] and "step_pairs" in out.get(fa["setting"], {})  # lockstep's median
            out[f"{model} fastest"] = {"step_time": out[fa["setting"]]["step_time"] if same else fa["step_s"] / fb["step_s"],
                                       "modes": f"thinkrl {fa['setting']} vs TRL {fb['setting']}"}
    return out


def step_pairs(mine: dict, theirs: dict) -> list[float]:
    """thinkrl/TRL step time of each measured step i that both ran back to back (lockstep runs), else []."""
    if mine.get("protocol") != "lockstep" or theirs.get("protocol") != "lockstep":
        return []
    t = {r["step"]: r["step_s"] for r in theirs["steps"]}
    return [r["step_s"] / t[r["step"]] for r in mine["steps"] if r["step"] in t]


def markdown(results: list[dict], rat: dict, peak: dict, started: str, a) -> str:
    ok = [r for r in results if "error" not in r]
    versions = {k: v for r in ok for k, v in r["versions"].items()}
    out = [f"Run {started} on `{a.device}` ({os.cpu_count()} CPUs), command `python benchmarks/grpo_vs_trl.py "
           f"--settings {a.settings}`; " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) + ".", "",
           "Matrix-product peak measured in the same run (GFLOP/s, 2048² square): "
           + ", ".join(f"{k} {v:.0f}" for k, v in peak.items()) + ".", "",
           "| setting | tool | step s | sample s | reward+score s | train s | generated tok/s | train GFLOP/s | % of peak | peak RSS GiB |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in ok:
        out.append(f"| {r['setting']} | {r['tool']} | {r['step_s']:.2f} | {r['sample_s']:.2f} | {r['score_s']:.2f} | "
                   f"{r['train_s']:.2f} | {r['gen_tok_s']:.0f} | {r['train_gflops']:.0f} | {_pct(r)} | {r['peak_rss_gib']:.2f} |")
    for r in results:
        if "error" in r:
            out.append(f"| {r['setting']} | {r['tool']} | failed: {r['error'][-200:]!r} |||||||")
    out += ["", "| pair | thinkrl/TRL step time | thinkrl/TRL peak RSS |", "|---|---|---|"]
    for k, v in rat.items():
        out.append(f"| {k}{' (' + v['modes'] + ')' if 'modes' in v else ''} | {v['step_time']:.2f} | "
                   f"{v['peak_rss']:.2f} |" if "peak_rss" in v else f"| {k} ({v['modes']}) | {v['step_time']:.2f} | |")
    out += ["", "Per-step values are medians of the measured steps (SmolLM2: 3 after one warm-up step; "
            "tiny: 10 after 3); a lockstep run's step-time ratio is the median of step i's ratios. Train GFLOP/s = 6 × parameters × tokens the trainer actually ran "
            "(thinkrl: each prompt once per group) / train seconds; % of peak: against the matrix-product peak "
            "(fp32: oneDNN, bf16: torch.mm) each worker measured in its own process right after its steps."]
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", default=CPU_DEFAULT, help=f"comma-separated, from: {', '.join(SETTINGS)}")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per tool's run")
    ap.add_argument("--sequential", action="store_true", help="each tool's worker alone, one after the other "
                    "(the protocol before lockstep): each tool's steps run in a different stretch of time")
    ap.add_argument("--json", type=Path, help="write all results here")
    ap.add_argument("--save", action="store_true", help="write each setting's results to "
                    "benchmarks/results/<machine>/<setting>.json (settings that failed are not written)")
    ap.add_argument("--markdown", type=Path, help="write the result tables here (benchmarks/RESULTS_TABLES.md)")
    a = ap.parse_args()
    names = [s for s in a.settings.split(",") if s]
    for s in names:
        if s not in SETTINGS:
            ap.error(f"unknown setting {s!r}")
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    machine = machine_name(a.device)
    meta = {"started": started, "date": started[:10], **git_commit(), "device": a.device,
            "machine": platform.processor() or platform.machine(), "machine_name": machine,
            "cpus": os.cpu_count(), "python": platform.python_version(), "command": " ".join(sys.argv)}
    if a.device == "cpu":
        from thinkrl.engine.cpu import cpu_class

        cpu = meta["cpu"] = cpu_class()  # model, flags, the kernel path, and thinkrl's float32 kernel choice
        print(f"CPU: {cpu['model']}, {cpu['class']} ({' '.join(cpu['flags'])}), thinkrl float32 products: "
              f"training {cpu['kernels']['train']} (small weights {cpu['kernels']['small']}), "
              f"sampling {cpu['kernels']['decode']}", flush=True)
    peak = meta["matmul_peak_gflops"] = matmul_peak(a.device)
    print("matmul peak GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in peak.items()), flush=True)
    results = []
    for i, setting in enumerate(names):
        order = ("thinkrl", "trl") if i % 2 == 0 else ("trl", "thinkrl")
        if a.sequential:
            pair = [run_worker(tool, setting, a.device, a.timeout) for tool in order]
        else:
            pair = run_lockstep(order, setting, a.device, 2 * a.timeout)
        for r in pair:
            results.append(r)
            print(table([r]).splitlines()[-1], flush=True)
    print()
    print(table(results))
    rat = ratios(results)
    print()
    for k, v in rat.items():
        extra = f" ({v['modes']})" if "modes" in v else f" peak_rss={v['peak_rss']:.2f}"
        if "step_pairs" in v:
            extra += (f" (median of the steps run back to back: {' '.join(f'{x:.2f}' for x in v['step_pairs'])}; "
                      f"ratio of the medians {v['step_time_of_medians']:.2f})")
        print(f"{k:24s} thinkrl/TRL step_time={v['step_time']:.2f}{extra}")
    if a.json:
        a.json.write_text(json.dumps({"meta": meta, "results": results, "ratios": rat}, indent=1))
    for setting in names if a.save else []:
        mine = [r for r in results if r["setting"] == setting]
        if any("error" in r for r in mine):
            print(f"{setting}: failed, not saved")
            continue
        path = RESULTS / machine / f"{setting}.json"
        device = f" --device {a.device}" if a.device != "cpu" else ""
        cmd = f"python benchmarks/grpo_vs_trl.py --settings {setting}{device} --json {path.relative_to(HERE.parent)}"
        out = {"meta": {**meta, "setting": setting, "source_command": meta["command"], "command": cmd}, "results": mine,
               "ratios": {setting: rat[setting]} if setting in rat else {}}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {path}")
    if a.markdown:
        a.markdown.write_text(markdown(results, rat, peak, started, a))
    main_pair = rat.get("smollm2-128") or next(iter(rat.values()), None)
    if main_pair and "peak_rss" in main_pair:
        print(f"thinkrl/TRL: step_time={main_pair['step_time']:.2f} peak_rss={main_pair['peak_rss']:.2f}")


if __name__ == "__main__":
    main()
