"""Learning the loss: base optimisers as differentiable rules, the one-step lookahead and its exact
meta-gradient, the online learner (AdaLFL), the offline phase (ML3), the descent guard, the TaylorGLO
search, and data-parallel replicas.

The names below load their module on first use, so importing the package stays cheap."""
from __future__ import annotations

from toolkit._faces import lazy_names

_WHERE = {
    "SGDRule": "rules",
    "RMSpropRule": "rules",
    "GroupedRule": "combined",
    "ClippedRule": "combined",
    "OptimizerLink": "optimizers",
    "ModelIO": "model_io",
    "AdamRule": "rules",
    "StepRule": "rules",
    "make_rule": "rules",
    "rule_from_optimizer": "optimizers",
    "Lookahead": "lookahead",
    "meta_gradient": "lookahead",
    "meta_gradient_naive": "lookahead",
    "meta_gradient_fd": "lookahead",
    "jacobian_vector_product": "tangents",
    "OnlineLossLearner": "online",
    "NonFiniteError": "online",
    "frozen_copy": "online",
    "offline_initialise": "offline",
    "descent_reflection": "guard",
    "parameter_reflection": "guard",
    "Guard": "guard",
    "GuardReport": "guard",
    "GuardCounts": "guard",
    "check_step": "guard",
    "search_taylorglo": "taylorglo",
    "taylorglo_loss": "taylorglo",
    "Replicas": "distributed",
    "from_environment": "distributed",
    "SyncBatchNorm": "distributed",
    "convert_sync_batchnorm": "distributed",
}
__getattr__, __dir__, __all__ = lazy_names(__name__, _WHERE)
