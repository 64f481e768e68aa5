"""thinkrl: teach language models to reason with reinforcement learning, the DeepSeek-R1 way."""

__version__ = "0.1.0"
