"""The step metrics on a dashboard besides `metrics.jsonl` (`run.report_to`): the same keys as
`metrics.jsonl` at their step, and every `run.log_samples_every` steps a few of the step's
completions with their rewards (what TRL's `log_completions` shows).

- `tensorboard`: event files in `RUN_DIR/tensorboard/` (scalars, the samples as text).
- `wandb`: a Weights & Biases run in `RUN_DIR/wandb/`, **offline** unless `WANDB_MODE` says
  otherwise (nothing here may reach the internet; `wandb sync RUN_DIR/wandb/offline-run-*`
  uploads it later), the run's config attached, the samples as a table; project `thinkrl`
  (`WANDB_PROJECT` to change it).

Both are the optional `logging` extra; asking for one without its package is a config error
before anything loads.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

DASHBOARDS = {"tensorboard": "tensorboard", "wandb": "wandb"}  # run.report_to name -> the package it needs


def missing(names) -> str | None:
    """Why `run.report_to` cannot be served here (None: it can)."""
    for name in names:
        if name not in DASHBOARDS:
            return f"run.report_to: unknown dashboard {name!r}; choose from {', '.join(DASHBOARDS)}"
        if importlib.util.find_spec(DASHBOARDS[name]) is None:
            return (f"run.report_to: {name} needs the `{DASHBOARDS[name]}` package: "
                    f"pip install -c constraints.txt -e '.[logging]'")
    return None


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoard:
    """Scalars per metric and sample texts, through torch's SummaryWriter."""

    def __init__(self, run_dir: Path, config: dict | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def write(self, metrics: dict, samples: list[dict] | None = None) -> None:
        step = int(metrics["step"])
        for key, value in _scalars(metrics).items():
            self.writer.add_scalar(key, value, step)
        if samples:
            rows = "\n\n".join(f"**reward {s['reward']}**\n\n    {s['completion']}" for s in samples)
            self.writer.add_text("samples", rows, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandB:
    """The metrics and sample tables as a Weights & Biases run, offline by default."""

    def __init__(self, run_dir: Path, config: dict | None = None) -> None:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "thinkrl"), name=Path(run_dir).name,
                              dir=str(run_dir), mode=os.environ.get("WANDB_MODE", "offline"), config=config or {},
                              settings=wandb.Settings(console="off", silent=True))

    def write(self, metrics: dict, samples: list[dict] | None = None) -> None:
        data = _scalars(metrics)
        if samples:
            data["samples"] = self.wandb.Table(columns=["completion", "reward"],
                                               data=[[s["completion"], s["reward"]] for s in samples])
        self.run.log(data, step=int(metrics["step"]))

    def close(self) -> None:
        self.run.finish()


SINKS = {"tensorboard": TensorBoard, "wandb": WandB}


def open_all(names, run_dir: Path, config: dict | None = None) -> list:
    return [SINKS[name](run_dir, config) for name in names]
