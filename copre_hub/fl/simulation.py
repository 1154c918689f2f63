"""One process's simulation state and the client-side arithmetic: local SGD, losses and gradients.

Clients are trained one after another on the same model object, in place: the round's starting weights are
restored with one copy from ``start`` and never deep-copied (on a CPU into the other of two flat vectors, so the last
client's weights can still be summed). Data sits on the device as uint8 and is normalised per
batch. Every random draw uses a generator passed in by the caller (keyed by seed, round and client).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from copre_hub.fl.aggregate import Accumulator
from copre_hub.fl.data import augment, normalize
from copre_hub.fl.distributed import Processes
from copre_hub.fl.optim import PLAIN_SGD, LocalSGD, SGDSettings
from copre_hub.fl.partition import FederatedData
from copre_hub.fl.state import FlatModel


class Simulation:
    """A model, its flat state, the federation's data on the device, and this process's place among processes."""

    def __init__(
        self,
        model: nn.Module,
        data: FederatedData,
        processes: Processes | None = None,
        augment: bool = False,
        eval_batch_size: int = 512,
    ) -> None:
        self.processes = processes or Processes()
        device = self.processes.device
        self.model = model.to(device)
        self.flat = FlatModel(self.model)
        self._params = [p for p in self.model.parameters() if p.requires_grad]  # views into flat.vector
        self.processes.broadcast_(self.flat.vector)
        self.start = self.flat.vector.clone()
        self.data = data
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        self.augment = augment
        self.eval_batch_size = eval_batch_size
        self._accumulators: dict[str, Accumulator] = {}
        self._workspaces: dict[str, torch.Tensor] = {}
        self._mean = self._std = None
        self.keeps_last_client = False  # see client_loop
        if data.mean is not None:
            shape = (1, -1, 1, 1)
            self._mean = torch.tensor(data.mean, device=device).view(shape)
            self._std = torch.tensor(data.std, device=device).view(shape)

    @property
    def device(self) -> torch.device:
        return self.processes.device

    def accumulator(self, name: str, sizes: dict[str, int]) -> Accumulator:
        """A zeroed accumulator with these slices, allocated on first use (or when the sizes change) and reused."""
        if name not in self._accumulators or self._accumulators[name].sizes != sizes:
            self._accumulators[name] = Accumulator(sizes, self.device)
        return self._accumulators[name].zero_()

    def workspace(self, name: str, numel: int) -> torch.Tensor:
        """A scratch float32 vector of ``numel`` elements, allocated once per name."""
        if name not in self._workspaces:
            self._workspaces[name] = torch.empty(numel, device=self.device)
        return self._workspaces[name]

    def snapshot(self) -> None:
        """Remember the current weights (the round's start, later the aggregate) for :meth:`restore`."""
        self.start.copy_(self.flat.vector)

    @contextlib.contextmanager
    def client_loop(self) -> Iterator[None]:
        """The span of a round's loop over clients, each begun with :meth:`restore`: on a CPU, restoring then
        leaves the weights it replaces intact until the next restore (:attr:`keeps_last_client`).

        The model alternates between two flat vectors there: one more model's memory buys adding two clients to
        the float64 sums in one pass (``Accumulator.add_(..., defer=True)``), which saves more than it costs on a
        CPU. An accelerator adds a float32 vector to a float64 sum in one fused kernel anyway. Outside the loop
        (a Flower server loading each reply into the model, say) nothing is kept and nothing waits.
        """
        self.keeps_last_client = self.device.type == "cpu"
        try:
            yield
        finally:
            self.keeps_last_client = False

    def restore(self) -> None:
        """Reset the model to the last :meth:`snapshot` (before each client)."""
        self.flat.load_(self.start, keep_current=self.keeps_last_client)

    def batch(
        self, indices: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs (normalised, augmented when training with a generator) and labels for ``indices``."""
        indices = indices.to(self.device, non_blocking=True)
        x = self.images[indices]
        if self.augment and generator is not None and x.dtype == torch.uint8:
            x = augment(x, generator, flip=self.data.flip)
        if x.dtype == torch.uint8:
            x = normalize(x, self._mean, self._std)
        return x, self.labels[indices]

    def loss(self, x: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        with self.processes.autocast():
            logits = self.model(x)
        return F.cross_entropy(logits.float(), y, reduction=reduction)

    def train(
        self,
        indices: torch.Tensor,
        *,
        lr: float,
        batch_size: int,
        generator: torch.Generator,
        epochs: int | None = None,
        steps: int | None = None,
        prox_mu: float = 0.0,
        sgd: SGDSettings = PLAIN_SGD,
    ) -> float:
        """Mini-batch SGD in place: ``epochs`` passes over ``indices``, or exactly ``steps`` mini-batches.

        ``prox_mu`` adds FedProx's proximal term ``mu/2 * ||w - w_start||^2``; ``sgd`` sets momentum, Nesterov and
        weight decay, whose state starts fresh with each call (one client's round). Returns the mean batch loss.

        Gradients come from ``torch.autograd.grad`` as fresh tensors (nothing to zero, nothing accumulated into
        ``flat.grad``) and the step is ``_foreach`` arithmetic, as in ``torch.optim.SGD``; the loss is summed on the
        device, so a step never waits for the accelerator.
        """
        self.model.train()
        n = self.flat.num_params
        optimizer = LocalSGD(self._params, lr, sgd, self._momentum_buffers() if sgd.momentum else None)
        total, count = torch.zeros((), device=self.device), 0
        for batch_idx in iterate_batches(indices, batch_size, generator, epochs=epochs, steps=steps):
            x, y = self.batch(batch_idx, generator)
            loss = self.loss(x, y)
            grads = torch.autograd.grad(loss, self._params, materialize_grads=True)  # zeros for unused parameters
            if prox_mu:  # the proximal gradient mu * (w - w_start), at the weights the gradient was taken at
                with torch.no_grad():
                    self.flat.params.sub_(self.flat.params - self.start[:n], alpha=lr * prox_mu)
            optimizer.step(grads)
            total += loss.detach()
            count += 1
        return float(total) / max(count, 1)

    def _momentum_buffers(self) -> list[torch.Tensor]:
        """Per-parameter views of one scratch vector: the momentum of the client being trained."""
        flat = self.workspace("momentum", self.flat.num_params)
        views = flat.split([p.numel() for p in self._params])
        return [view.view_as(p) for view, p in zip(views, self._params, strict=True)]

    def loss_and_grad(self, indices: torch.Tensor) -> float:
        """Mean cross-entropy over all of ``indices`` (train-mode forward) with its gradient left in ``flat.grad``."""
        self.model.train()
        self.flat.zero_grad_()
        total = 0.0
        for chunk in indices.split(self.eval_batch_size):
            x, y = self.batch(chunk)
            loss = self.loss(x, y, reduction="sum") / indices.numel()
            loss.backward()
            total += float(loss.detach())
        return total

    @torch.no_grad()
    def evaluate(self, indices: torch.Tensor, train_mode: bool = False) -> tuple[float, float]:
        """Mean cross-entropy and accuracy over ``indices`` (eval-mode BatchNorm unless ``train_mode``)."""
        self.model.train(train_mode)
        loss_sum, correct = 0.0, 0
        for chunk in indices.split(self.eval_batch_size):
            x, y = self.batch(chunk)
            with self.processes.autocast():
                logits = self.model(x).float()
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
        n = max(indices.numel(), 1)
        return loss_sum / n, correct / n


def iterate_batches(
    indices: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    epochs: int | None = None,
    steps: int | None = None,
) -> Iterator[torch.Tensor]:
    """Shuffled mini-batches: ``epochs`` full passes, or ``steps`` batches drawn pass after pass.

    A trailing batch of one sample is dropped (BatchNorm cannot train on it) unless it is the only one.
    """
    if (epochs is None) == (steps is None):
        raise ValueError("give exactly one of epochs and steps")
    done = 0
    passes = 0
    while (epochs is not None and passes < epochs) or (steps is not None and done < steps):
        order = indices[torch.randperm(indices.numel(), generator=generator)]
        for batch in order.split(batch_size):
            if batch.numel() == 1 and indices.numel() > 1:
                continue
            yield batch
            done += 1
            if steps is not None and done >= steps:
                return
        passes += 1
