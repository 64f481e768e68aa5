"""How tensors are computed (sampling, log-probs, CPU kernels, memory); knows nothing of RL."""
