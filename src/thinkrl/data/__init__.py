"""Data: prompt templates (templates.py) and local benchmark / JSONL loaders (loaders.py)."""

from thinkrl.data.loaders import (
    BENCHMARKS, DataError, Problem, default_data_dir, load_aime24, load_amc23, load_benchmark,
    load_gsm8k, load_jsonl_problems, load_math500, read_jsonl,
)
from thinkrl.data.templates import (
    MATH_SUFFIX, R1_ZERO_TEMPLATE, build_prompt, chat_prompt, r1_zero_prompt,
)

__all__ = [
    "BENCHMARKS", "DataError", "Problem", "default_data_dir", "load_aime24", "load_amc23",
    "load_benchmark", "load_gsm8k", "load_jsonl_problems", "load_math500", "read_jsonl",
    "MATH_SUFFIX", "R1_ZERO_TEMPLATE", "build_prompt", "chat_prompt", "r1_zero_prompt",
]
