"""The jobs: GRPO step and run, SFT, distillation, rejection sampling, build-base; checkpoints, metrics, reports."""
