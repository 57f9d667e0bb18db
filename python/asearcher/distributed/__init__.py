"""At scale: the FSDP2 learner under ``torchrun``, fed by the Rust rollout engine on global rank 0
(``learner.backend = "fsdp"`` in the train config; see docs/scale.md).

- :func:`fit`: train on every rank (``torchrun --nproc_per_node N -m asearcher train CONFIG``
  calls it for you).
- :class:`FsdpLearner`: one rank's part of the learner.
- :func:`init_distributed`: the process group from torchrun's environment.
- :func:`plan_ppo_step`: what each rank trains on (the Rust buffer stage's plan);
  :func:`tch_ppo_step`: the embedded learner's step on the same groups (the reference).
"""

from .fsdp import FsdpLearner
from .launch import RankInfo, fit, init_distributed
from .plan import plan_ppo_step, tch_ppo_step

__all__ = ["FsdpLearner", "RankInfo", "fit", "init_distributed", "plan_ppo_step", "tch_ppo_step"]
