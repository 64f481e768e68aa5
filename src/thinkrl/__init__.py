"""thinkrl: teach language models to reason with reinforcement learning, the DeepSeek-R1 way."""

import os

# torch's CPU allocator backs large tensors with 2 MB transparent huge pages when this is set
# before its first allocation: far fewer page faults for the per-step activations and logits
# (measured: ~10-25% off a SmolLM2 training step on this 2-core VM). Only a default.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"
