"""What a copre-hub Flower server and its clients say to each other: message types, record keys, the round's job.

Three exchanges, each a Flower message type:

* ``query.identify``: once, before the first round; each node answers with its ``partition-id`` (the client id
  that keys the engine's seeded draws), so the server can send participant ``c``'s work to the node holding ``c``;
* ``train``: ``arrays`` (the round's start) and ``config`` (the :class:`Job`); the reply carries the trained
  ``arrays`` and ``metrics`` (``num-examples``: the aggregation weight, ``train_loss``, ``start_loss``), and
  ``gradient`` too when the method's aggregation reads the client's gradient (``Method.sends_gradient``: FedMeta's
  meta-gradient at the adapted weights);
* ``query.meta_gradient``: ``arrays`` (the temporary model Φ̄) and ``config``; the reply carries ``gradient``
  (one flat ``grad`` array: ∇L_Q(Φ̄) over the parameters) and ``metrics`` (``query_loss``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType

from copre_hub.errors import CopreHubError
from copre_hub.fl.methods import Method, create_method

IDENTIFY = f"{MessageType.QUERY}.identify"
TRAIN = MessageType.TRAIN
META_GRADIENT = f"{MessageType.QUERY}.meta_gradient"

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
GRADIENT = "gradient"
PARTITION_ID = "partition-id"


class FederationError(CopreHubError, RuntimeError):
    """The federation cannot run the round: a node failed, did not answer, or the nodes do not cover the clients."""


@dataclass(frozen=True)
class Job:
    """What every message of a round tells a client: the method and its settings, the model to build, the run's
    seed, the round (0-based, as the engine counts), the number of clients in the federation and whether local
    training augments its batches (random crop and flip, the recipe's ``data.augment``).

    ``model`` is ``{"architecture": ..., "model_args": {...}, "num_classes": ...}``: a client builds the timm
    architecture from it without weights and takes the weights from the message.
    """

    method: Method
    model: dict[str, Any]
    seed: int
    round: int
    num_clients: int
    augment: bool = False

    def to_config(self) -> ConfigRecord:
        """The job as a Flower ``ConfigRecord`` (with Flower's own ``server-round``, 1-based)."""
        return ConfigRecord(
            {
                "server-round": self.round + 1,
                "method": json.dumps(self.method.hyperparameters()),
                "model": json.dumps(self.model),
                "seed": self.seed,
                "num-clients": self.num_clients,
                "augment": self.augment,
            }
        )

    @classmethod
    def from_config(cls, config: ConfigRecord) -> Job:
        """The job a ``train`` or ``query.meta_gradient`` message carries.

        Raises:
            ConfigError: the method or one of its settings is unknown to this copre-hub.
        """
        params = json.loads(str(config["method"]))
        return cls(
            method=create_method(params.pop("name"), **params),
            model=json.loads(str(config["model"])),
            seed=int(config["seed"]),
            round=int(config["server-round"]) - 1,
            num_clients=int(config["num-clients"]),
            augment=bool(config["augment"]),
        )


def state_arrays(model: torch.nn.Module) -> ArrayRecord:
    """The model's ``state_dict`` as an ``ArrayRecord`` (a copy)."""
    return ArrayRecord(model.state_dict())


def load_arrays_(model: torch.nn.Module, arrays: ArrayRecord) -> None:
    """Copy ``arrays`` into ``model``'s tensors in place (so the engine's flat views keep pointing at them)."""
    model.load_state_dict(arrays.to_torch_state_dict(), strict=True)


def vector_arrays(vector: torch.Tensor) -> ArrayRecord:
    """A flat vector as an ``ArrayRecord`` holding one array, ``grad``."""
    return ArrayRecord({"grad": vector.detach().cpu().clone()})


def arrays_vector(arrays: ArrayRecord) -> torch.Tensor:
    """The flat vector of :func:`vector_arrays`."""
    return arrays.to_torch_state_dict()["grad"]


def replies_by_client(replies: list[Message], expected: list[int], what: str) -> dict[int, Message]:
    """The replies of a phase keyed by the client id they report, after checking every participant answered.

    Raises:
        FederationError: a reply is an error, or a participant did not answer (naming which, and why).
    """
    failed = [f"node {r.metadata.src_node_id}: {r.error.reason}" for r in replies if r.has_error()]
    if failed:
        raise FederationError(f"{len(failed)} {what} replies failed, e.g. {failed[0]}; see that SuperNode's log.")
    by_client = {int(r.content[METRICS][PARTITION_ID]): r for r in replies}
    missing = sorted(set(expected) - set(by_client))
    if missing:
        raise FederationError(
            f"clients {missing[:10]} sent no {what} reply in time; check that their SuperNodes are running, or "
            "raise the strategy's timeout."
        )
    return by_client
