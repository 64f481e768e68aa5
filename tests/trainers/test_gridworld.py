"""The cat-and-meat grid world: its rules, the returns, and what a baseline does to the gradient."""

import json

import pytest
import torch

from thinkrl.cli import main as cli
from thinkrl.envs.gridworld import Grid, next_cells, rollout
from thinkrl.trainers import gridworld as gw

UP, DOWN, LEFT, RIGHT = range(4)


def always(action: int, grid: Grid = Grid()) -> torch.Tensor:
    """Logits (cells, 4) of a policy that (almost surely) takes `action` everywhere."""
    logits = torch.full((grid.cells, 4), -50.0)
    logits[:, action] = 50.0
    return logits


def test_moves_walls_and_edges():
    g = Grid()
    cells = torch.tensor([g.cell((0, 0)), g.cell((0, 1)), g.cell((2, 1)), g.cell((4, 4))])
    assert next_cells(g, cells, torch.tensor([UP, DOWN, UP, RIGHT])).tolist() == [
        g.cell((0, 0)),  # off the grid: stays
        g.cell((0, 1)),  # (1, 1) is a wall: stays
        g.cell((2, 1)),  # (1, 1) again, from below
        g.cell((4, 4)),  # off the grid
    ]


def test_rewards_and_the_meat_ends_the_episode():
    g, gen = Grid(), torch.Generator().manual_seed(0)
    # from (4, 0) walking right: (4, 1), (4, 2), (4, 3), then the meat at (4, 4)
    ep = rollout(g, always(RIGHT), torch.tensor([g.cell((4, 0))]), gen)
    assert ep.mask[0].tolist() == [True] * 4 + [False] * 12 and ep.found.tolist() == [True]
    assert ep.rewards[0, :4].tolist() == [0.0, 0.0, 0.0, 100.0]
    # from (2, 0) walking right: (2, 1), the bathtub (2, 2) -10, (2, 3), the broom (2, 4) -1, then bumps (0)
    ep = rollout(g, always(RIGHT), torch.tensor([g.cell((2, 0))]), gen)
    assert ep.rewards[0, :5].tolist() == [0.0, -10.0, 0.0, -1.0, 0.0] and ep.mask[0].all() and not ep.found[0]


def test_returns_to_go_hand_computed():
    g, gen = Grid(), torch.Generator().manual_seed(0)
    ep = rollout(g, always(RIGHT), torch.tensor([g.cell((4, 0))]), gen)
    to_go = gw.returns_to_go(ep, 0.9)
    torch.testing.assert_close(to_go[0, :5], torch.tensor([72.9, 81.0, 90.0, 100.0, 0.0]))


def test_a_baseline_cuts_the_gradient_variance():
    """Near a good policy, every estimator with a baseline (learned value, group mean, critic)
    has a fraction of the no-baseline estimator's variance (measured, seeded)."""
    cfg = gw.GridConfig(iterations=10)
    _, logits = gw.train("reinforce", cfg)
    noise = gw.gradient_noise(logits, cfg, batches=100)
    assert noise["baseline"]["variance"] < noise["reinforce"]["variance"] / 5
    assert noise["group_mean_only"]["variance"] < noise["episode_return"]["variance"] / 5
    assert noise["ppo"]["relative"] < noise["reinforce"]["relative"] / 5
    assert noise["group"]["relative"] < noise["episode_return"]["relative"] / 5


@pytest.mark.parametrize("method", gw.METHODS)
def test_every_method_learns(method):
    curve, _ = gw.train(method, gw.GridConfig(iterations=40))
    assert sum(curve[-5:]) / 5 > sum(curve[:5]) / 5 + 20


def test_cli_writes_results_and_plot(tmp_path, capsys):
    assert cli.main(["gridworld", "--output-dir", str(tmp_path), "--iterations", "5", "--seeds", "1"]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert set(result["table"]) == set(gw.METHODS) and (tmp_path / "curves.png").stat().st_size > 1000
    assert "gradient variance" in capsys.readouterr().out
