"""Federated pre-training on real federations with Flower (``pip install "copre-hub[flower]"``, flwr >= 1.42).

The engine's methods (CoPreFL, FedAvg, FedMeta, q-FFL) run as a Flower ``Strategy`` (:class:`PreTraining`) and a
``ClientApp`` (:func:`pretraining_client_app`) on Flower's Message API. Each party holds only its own data
(:class:`LocalData`); the arithmetic (local SGD, aggregation, the meta-step, Scenario II's server update) is the
engine's own, called rather than copied, and every random draw comes from the engine's seeded keys, so a Flower run
ends with the engine's weights. :mod:`copre_hub.flower.app` runs a recipe this way with ``flwr run``.

Importing this package imports flwr and torch.
"""

from __future__ import annotations

from copre_hub.flower.client import LocalData, build_model, pretraining_client_app
from copre_hub.flower.messages import FederationError, Job
from copre_hub.flower.strategy import PreTraining

__all__ = ["FederationError", "Job", "LocalData", "PreTraining", "build_model", "pretraining_client_app"]
