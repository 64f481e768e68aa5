"""The cat-and-meat grid world the RL background is told with, batched in torch.

A cat walks the cells of a small house toward a piece of meat. Each step it moves up, down,
left or right; a move into a wall or off the grid leaves it in place. Entering a cell pays
that cell's reward: an empty cell 0, a broom −1, the bathtub −10, the meat +100 (and the
episode ends there); staying in place pays 0. An episode that has not found the meat after
`max_steps` moves just stops. Default house (5 × 5; B broom, T bathtub, M meat, # wall;
episodes start on any free cell):

    . . . B .
    . # # . .
    . . T . B
    B . . # .
    . . . . M

Episodes run as a batch: every row its own start cell, one categorical draw per live row per
step from the policy's logits at its cell. Shapes: N episodes, T = max_steps moves.
Left out: stochastic moves (slippery floors), partial observability.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MOVES = torch.tensor([[-1, 0], [1, 0], [0, -1], [0, 1]])  # up, down, left, right: (4, 2) row/column steps


@dataclass(frozen=True)
class Grid:
    size: int = 5
    meat: tuple[int, int] = (4, 4)
    bathtub: tuple[int, int] = (2, 2)
    brooms: tuple[tuple[int, int], ...] = ((0, 3), (2, 4), (3, 0))
    walls: tuple[tuple[int, int], ...] = ((1, 1), (1, 2), (3, 3))
    rewards: tuple[float, float, float] = (100.0, -10.0, -1.0)  # meat, bathtub, broom
    max_steps: int = 16

    @property
    def cells(self) -> int:
        return self.size * self.size

    def cell(self, rc: tuple[int, int]) -> int:
        return rc[0] * self.size + rc[1]

    def cell_rewards(self) -> torch.Tensor:
        """(cells,) the reward for entering each cell."""
        r = torch.zeros(self.cells)
        r[self.cell(self.meat)], r[self.cell(self.bathtub)] = self.rewards[0], self.rewards[1]
        r[[self.cell(b) for b in self.brooms]] = self.rewards[2]
        return r

    def start_cells(self) -> list[int]:
        """Cells an episode may start in: free of meat, bathtub, broom and wall."""
        taken = {self.cell(self.meat), self.cell(self.bathtub), *(self.cell(c) for c in self.brooms + self.walls)}
        return [c for c in range(self.cells) if c not in taken]


@dataclass
class Episodes:
    states: torch.Tensor  # (N, T) long: the cell before each move
    actions: torch.Tensor  # (N, T) long
    logp: torch.Tensor  # (N, T) float: log π(action | cell) when drawn, 0 past the end
    mask: torch.Tensor  # (N, T) bool: moves made (a prefix of each row)
    rewards: torch.Tensor  # (N, T) float: the reward of each move, 0 past the end
    found: torch.Tensor  # (N,) bool: reached the meat


def next_cells(grid: Grid, cells: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Where each move lands (N,): off-grid and wall moves stay put."""
    rc = torch.stack([cells // grid.size, cells % grid.size], -1) + MOVES[actions]  # (N, 2)
    inside = ((rc >= 0) & (rc < grid.size)).all(-1)  # (N,)
    moved = rc[:, 0].clamp(0, grid.size - 1) * grid.size + rc[:, 1].clamp(0, grid.size - 1)  # (N,)
    wall = torch.zeros(grid.cells, dtype=torch.bool)
    wall[[grid.cell(w) for w in grid.walls]] = True
    return torch.where(inside & ~wall[moved], moved, cells)


@torch.no_grad()
def rollout(grid: Grid, logits: torch.Tensor, starts: torch.Tensor, generator: torch.Generator) -> Episodes:
    """Run one episode from each start cell (N,) under the policy logits (cells, 4)."""
    N, T = len(starts), grid.max_steps
    states = torch.zeros(N, T, dtype=torch.long)
    actions = torch.zeros(N, T, dtype=torch.long)
    logp = torch.zeros(N, T)
    mask = torch.zeros(N, T, dtype=torch.bool)
    rewards = torch.zeros(N, T)
    cell_reward, meat = grid.cell_rewards(), grid.cell(grid.meat)
    cell, live = starts.clone(), torch.ones(N, dtype=torch.bool)
    for t in range(T):
        lp = torch.log_softmax(logits[cell], -1)  # (N, 4)
        a = torch.multinomial(lp.exp(), 1, generator=generator).squeeze(-1)  # (N,)
        states[:, t], actions[:, t], mask[:, t] = cell, a, live
        logp[:, t] = torch.where(live, lp.gather(-1, a[:, None]).squeeze(-1), 0.0)
        moved = next_cells(grid, cell, a)  # (N,)
        rewards[:, t] = torch.where(live & (moved != cell), cell_reward[moved], 0.0)
        cell = torch.where(live, moved, cell)
        live = live & (cell != meat)
    return Episodes(states, actions, logp, mask, rewards, cell == meat)
