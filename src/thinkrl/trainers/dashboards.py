"""The step metrics on a dashboard besides `metrics.jsonl` (`run.report_to`): TensorBoard event
files in `RUN_DIR/tensorboard/`, the same keys as `metrics.jsonl` as scalars at their step, and
every `run.log_samples_every` steps a few of the step's completions as text (what TRL's
`log_completions` shows). `tensorboard` is the optional `logging` extra; asking for it without
the package is a config error before anything loads.
Left out: Weights & Biases (not installed on these machines, so not tested here).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

DASHBOARDS = {"tensorboard": "tensorboard"}  # run.report_to name -> the package it needs


def missing(names) -> str | None:
    """Why `run.report_to` cannot be served here (None: it can)."""
    for name in names:
        if name not in DASHBOARDS:
            return f"run.report_to: unknown dashboard {name!r}; choose from {', '.join(DASHBOARDS)}"
        if importlib.util.find_spec(DASHBOARDS[name]) is None:
            return (f"run.report_to: {name} needs the `{DASHBOARDS[name]}` package: "
                    f"pip install -c constraints.txt -e '.[logging]'")
    return None


class TensorBoard:
    """Scalars per metric and sample texts, through torch's SummaryWriter."""

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def write(self, metrics: dict, samples: list[dict] | None = None) -> None:
        step = int(metrics["step"])
        for key, value in metrics.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, step)
        if samples:
            rows = "\n\n".join(f"**reward {s['reward']}**\n\n    {s['completion']}" for s in samples)
            self.writer.add_text("samples", rows, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


SINKS = {"tensorboard": TensorBoard}


def open_all(names, run_dir: Path) -> list:
    return [SINKS[name](run_dir) for name in names]
