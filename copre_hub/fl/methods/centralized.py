"""Centralized pre-training (the paper's "Centralized" baseline): SGD on the pooled pre-training data.

A round is one epoch over every client's data (and the server's in Scenario II); the paper uses batch 64 and 50
epochs. Every process computes the same epoch, so extra processes add no speed here, only agreement. Momentum
and weight decay apply as for clients; the momentum state starts fresh with each epoch (each round).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from copre_hub.errors import DataError
from copre_hub.fl.methods.base import Method
from copre_hub.fl.partition import FederatedData
from copre_hub.fl.seeding import generator
from copre_hub.fl.simulation import Simulation


@dataclass(frozen=True, kw_only=True)
class Centralized(Method):
    """SGD on all pre-training data; ``rounds`` counts epochs."""

    name = "centralized"
    display_name = "Centralized"

    batch_size: int = 64

    def validate(self, data: FederatedData) -> None:
        if sum(data.client_sizes) == 0:
            raise DataError("there is no pre-training data to train on; check the class split and partition.")
        if self.scenario == 2 and (data.server is None or data.server.numel() == 0):
            raise DataError("Scenario II pools the server data too, but there is none; set partition.server_fraction.")

    def round(self, sim: Simulation, seed: int, t: int) -> dict:
        parts = [*sim.data.clients, *([sim.data.server] if self.scenario == 2 else [])]
        pooled = torch.cat(parts)
        loss = sim.train(
            pooled,
            lr=self.lr,
            batch_size=self.batch_size,
            epochs=1,
            generator=generator(seed, "centralized", t),
            sgd=self.sgd,
        )
        return {"train_loss": loss}
