"""Pure tensor math: no models, no config objects.

Importing the package registers the advantage estimators and policy losses (`registry`).
"""

from thinkrl.algos import grpo as _grpo  # noqa: F401  (registers "grpo" and "clip")
