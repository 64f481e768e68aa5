"""torchrun around thinkrl: a failing rank ends the job quickly, two "nodes" on localhost,
`--nproc 2` end to end for train, sft and distill, and kill -9 of a rank mid-run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from dp_helpers import free_port


RAISER = """
import os, time, torch.distributed as dist
from thinkrl.distributed import env
env.init()
if env.current().rank == 1:
    raise RuntimeError("rank 1 failed on purpose")
dist.barrier()  # rank 0 waits here for a rank that will never come
time.sleep(600)
"""


def test_a_failing_rank_ends_the_job_quickly(tmp_path):
    script = tmp_path / "raiser.py"
    script.write_text(RAISER)
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and time.monotonic() - start < 60
    assert "rank 1 failed on purpose" in out.stderr + out.stdout


NODE = """
import torch, torch.distributed as dist
from thinkrl.distributed import data_parallel as dp, env
world = env.init()
print("sum", dp.all_reduce_sum(world.rank + 1), "of", world.size, flush=True)
env.shutdown()
"""


def test_two_nodes_on_localhost(tmp_path):
    """Multi-node is torchrun's rendezvous: two 'nodes' of one process each on this machine."""
    script = tmp_path / "node.py"
    script.write_text(NODE)
    port = free_port()
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={i}",
                               "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                               "--rdzv-id=thinkrl-test", str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    outs = [n.communicate(timeout=120) for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outs
    assert all("sum 3.0 of 2" in out for out, _ in outs)


def test_train_nproc_2_end_to_end(tmp_path):
    """`thinkrl train --nproc 2`: one run directory written by rank 0, metrics once per step,
    a checkpoint and a final model, exit 0."""
    from thinkrl.models.tiny import SHIPPED_BASE

    run = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "thinkrl", "train", "--nproc", "2", "--output-dir", str(run),
                          f"model.path={SHIPPED_BASE}", "grpo.steps=2", "grpo.prompts_per_step=2", "grpo.group_size=4",
                          "grpo.max_new_tokens=16", "data.eval_size=4", "run.eval_samples=1", "run.progress=false"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]
    assert (run / "final_model").is_dir() and (run / "checkpoints/step-000002/COMPLETE").exists()
    assert out.stdout.count("Done in") == 1  # rank 0 alone reports


def test_sft_nproc_2_end_to_end(tmp_path):
    """`thinkrl sft --nproc 2`: rank 0 writes the model, metrics (one line per step) and summary."""
    from thinkrl.models.tiny import SHIPPED_BASE

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1=", "response": f"{i + 1}"}) + "\n" for i in range(6)))
    out = subprocess.run([sys.executable, "-m", "thinkrl", "sft", "--nproc", "2", "--model", str(SHIPPED_BASE),
                          "--data", str(data), "--output-dir", str(tmp_path / "sft"), "--template", "plain",
                          "--batch-size", "4", "--epochs", "1", "--eos-check-prompts", "0"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert [json.loads(x)["step"] for x in (tmp_path / "sft/metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert (tmp_path / "sft/final_model").is_dir() and out.stdout.count("wrote ") == 1


def test_distill_nproc_2_end_to_end(tmp_path):
    """`thinkrl distill --nproc 2` (logit KD, top-k stored): every problem's samples written once by
    rank 0, metrics one line per step, the student saved."""
    from thinkrl.models.tiny import SHIPPED_BASE

    out = subprocess.run([sys.executable, "-m", "thinkrl", "distill", "--nproc", "2", "--teacher", str(SHIPPED_BASE),
                          "--student", str(SHIPPED_BASE), "--data", "arithmetic", "--limit", "6", "--method", "logit_kd",
                          "--teacher-topk", "4", "--samples-per-prompt", "2", "--max-new-tokens", "12",
                          "--batch-size", "4", "--epochs", "1", "--eos-check-prompts", "0",
                          "--output-dir", str(tmp_path / "kd")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "kd/teacher_samples.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and len({(r["id"], r["sample"]) for r in rows}) == 12
    assert [json.loads(x)["step"] for x in (tmp_path / "kd/metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert (tmp_path / "kd/final_model").is_dir() and (tmp_path / "kd/teacher_topk.safetensors").exists()


def _worker_pid(mark: str, rank: int) -> int | None:
    """The pid of the torchrun worker of `rank` whose environment carries `mark`."""
    for d in Path("/proc").iterdir():
        try:
            env = (d / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if f"THINKRL_TEST_MARK={mark}".encode() in env and f"RANK={rank}".encode() in env and d.name.isdigit():
            return int(d.name)
    return None


def test_sigkill_of_a_rank_leaves_the_last_checkpoint_usable(tmp_path):
    """kill -9 of rank 1 mid-run: the job exits non-zero within seconds, the last complete
    checkpoint is intact, and `--resume` finishes the run from it."""
    import os
    import signal
    import uuid

    from thinkrl.models.tiny import SHIPPED_BASE
    from thinkrl.trainers.checkpoint import latest_checkpoint

    run, mark = tmp_path / "run", uuid.uuid4().hex
    cmd = [sys.executable, "-m", "thinkrl", "train", "--nproc", "2", "--output-dir", str(run),
           f"model.path={SHIPPED_BASE}", "grpo.steps=60", "grpo.prompts_per_step=2", "grpo.group_size=4",
           "grpo.max_new_tokens=16", "data.eval_size=4", "run.eval_samples=1", "run.checkpoint_every=2",
           "run.progress=false"]
    job = subprocess.Popen(cmd, env={**os.environ, "THINKRL_TEST_MARK": mark}, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while latest_checkpoint(run) is None or latest_checkpoint(run).name < "step-000004":
        assert job.poll() is None and time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.2)
    pid = _worker_pid(mark, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    start = time.monotonic()
    job.wait(timeout=60)
    assert job.returncode != 0 and time.monotonic() - start < 60
    ckpt = latest_checkpoint(run)
    assert ckpt is not None and (ckpt / "model.safetensors").exists()
    done = int(ckpt.name.split("-")[1])
    resumed = subprocess.run([sys.executable, "-m", "thinkrl", "train", "--nproc", "2", "--resume", str(run)],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 61)) and done >= 4
