"""Pure tensor math: no models, no config objects.

Importing the package registers the advantage estimators and policy losses (`registry`).
"""

from thinkrl.algos import advantages as _advantages  # noqa: F401  (rloo, reinforce_pp, gae)
from thinkrl.algos import grpo as _grpo  # noqa: F401  (grpo, clip)
from thinkrl.algos import policy_losses as _policy_losses  # noqa: F401  (gspo, cispo)
