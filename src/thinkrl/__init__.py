"""thinkrl: teach language models to reason with reinforcement learning, the DeepSeek-R1 way."""

from thinkrl.engine import allocator

# CPU allocator defaults (huge pages for torch's large tensors; glibc keeps freed blocks for
# reuse): far fewer page faults per training step. See thinkrl.engine.allocator; THINKRL_MALLOC=0 and
# THP_MEM_ALLOC_ENABLE=0 opt out.
allocator.set_thp_default()
allocator.keep_freed_memory()

__version__ = "0.1.0"
