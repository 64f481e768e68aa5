"""Evaluation as DeepSeek-R1 reports it: pass@1 over K samples, pass@k, cons@K."""
