"""Small environments for the RL background (pure torch, nothing of thinkrl)."""
