"""Vector-Jacobian products through a client's local SGD trajectory (CoPreFL's optional second-order meta-step).

The trajectory is replayed functionally (``torch.func.functional_call``) with the same generator, hence the same
batches and augmentations, as the in-place local training, keeping the graph of every step (``create_graph``).
Memory grows with the number of local steps; that is the price of the exact meta-gradient.
"""

from __future__ import annotations

import torch
from torch.func import functional_call
from torch.nn import functional as F

from copre_hub.fl.optim import PLAIN_SGD, SGDSettings
from copre_hub.fl.simulation import Simulation, iterate_batches


def trajectory_vjp(
    sim: Simulation,
    *,
    start: torch.Tensor,
    indices: torch.Tensor,
    vector: torch.Tensor,
    lr: float,
    batch_size: int,
    generator: torch.Generator,
    epochs: int | None = None,
    steps: int | None = None,
    sgd: SGDSettings = PLAIN_SGD,
) -> torch.Tensor:
    """``J^T vector`` where J is the Jacobian of the client's final parameters with respect to its start.

    The replay is of plain SGD; momentum and weight decay are refused (``CoPreFL`` checks it at construction).
    """
    if not sgd.is_plain:
        raise ValueError("the second-order replay supports plain SGD only")
    flat = sim.flat
    theta0 = start[: flat.num_params].clone().requires_grad_(True)
    buffers = {name: t.clone() for name, t in flat.unflatten(start).items() if name in set(flat.buffer_names)}
    theta = theta0
    sim.model.train()
    for batch in iterate_batches(indices, batch_size, generator, epochs=epochs, steps=steps):
        x, y = sim.batch(batch, generator)
        with sim.processes.autocast():
            logits = functional_call(sim.model, {**flat.unflatten(theta), **buffers}, (x,))
        loss = F.cross_entropy(logits.float(), y)
        (grad,) = torch.autograd.grad(loss, theta, create_graph=True)
        theta = theta - lr * grad
    (vjp,) = torch.autograd.grad(theta, theta0, grad_outputs=vector)
    return vjp
