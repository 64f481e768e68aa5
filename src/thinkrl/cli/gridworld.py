"""`thinkrl gridworld`: the cat-and-meat grid world learned four ways (`trainers/gridworld.py`)."""

from __future__ import annotations

import argparse

GRIDWORLD_HELP = """\
The RL background in seconds: a cat learns to walk to the meat (broom -1, bathtub -10, meat
+100) by REINFORCE without and with a learned baseline, by GRPO's group baseline, and by PPO
with a value table and GAE, all through the policy-loss code the language models train with.
Prints each method's return before/after and the variance of each policy-gradient estimate;
writes DIR/results.json and DIR/curves.png.

  thinkrl gridworld --output-dir runs/gridworld
"""


def add_gridworld_parser(sub, handler) -> None:
    p = sub.add_parser("gridworld", description=GRIDWORLD_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", default="runs/gridworld", help="where results.json and curves.png go")
    p.add_argument("--iterations", type=int, default=150, help="policy updates per method (64 episodes each)")
    p.add_argument("--seeds", type=int, default=4, help="runs per method, averaged")
    p.set_defaults(func=handler)


def gridworld_main(args) -> int:
    from pathlib import Path

    from thinkrl.config import ConfigError
    from thinkrl.trainers.gridworld import GridConfig, run

    if args.iterations < 1 or args.seeds < 1:
        raise ConfigError("--iterations and --seeds must be at least 1")
    run(GridConfig(iterations=args.iterations), args.seeds, Path(args.output_dir))
    return 0
