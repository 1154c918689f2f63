"""FedAvg pre-training (McMahan et al. 2017): the base round with nothing added.

In Scenario II it is followed, every round, by ``server_steps`` SGD iterations on the server data (the hybrid-FL
baseline of the paper).
"""

from __future__ import annotations

from dataclasses import dataclass

from copre_hub.fl.methods.base import Method


@dataclass(frozen=True, kw_only=True)
class FedAvg(Method):
    """Local SGD on each participant's full data, averaged with weights proportional to data size."""

    name = "fedavg"
    display_name = "FedAvg"
