"""A model whose weights live in one flat tensor, so restoring, averaging and stepping are single vector ops.

Parameters and floating-point buffers (BatchNorm running statistics) are re-pointed at slices of ``vector``; the
parameters come first, so ``vector[:num_params]`` is what gradients and meta-steps touch, while aggregation works on
the whole ``vector`` (buffers are averaged like parameters). Gradients are views into ``grad`` the same way: autograd
accumulates into them in place, and one ``add_`` is an SGD step on every parameter.
"""

from __future__ import annotations

import torch
from torch import nn


class FlatModel:
    """Flat views over ``model``'s state. ``model`` keeps working as an ordinary ``nn.Module``."""

    def __init__(self, model: nn.Module) -> None:
        named_params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        params = [p for _, p in named_params]
        float_buffers = [(m, n, b) for m, n, b in _buffers(model) if b.is_floating_point()]
        tensors = [*params, *(b for _, _, b in float_buffers)]
        dtypes = {t.dtype for t in tensors}
        if dtypes != {torch.float32}:
            raise TypeError(f"flat state needs float32 weights, found {sorted(map(str, dtypes))}; call model.float().")
        device = tensors[0].device
        self.model = model
        self.num_params = sum(p.numel() for p in params)
        self._params = params
        self._buffer_slots = [(module, name.rsplit(".", 1)[-1]) for module, name, _ in float_buffers]
        self._shapes = [t.shape for t in tensors]
        self.vector = torch.cat([t.detach().reshape(-1) for t in tensors]).to(device)
        self._views = self._split(self.vector)
        self._point_at(self._views)
        self._spare: tuple[torch.Tensor, list[torch.Tensor]] | None = None  # see load_(keep_current=True)
        self.grad = torch.zeros(self.num_params, device=device)
        for p, view in zip(params, self._split(self.grad), strict=True):
            p.grad = view
        self._int_buffers = [(b, b.clone()) for _, _, b in _buffers(model) if not b.is_floating_point()]
        self.param_names = [n for n, _ in named_params]
        self.buffer_names = [n for _, n, _ in float_buffers]

    def _split(self, vector: torch.Tensor) -> list[torch.Tensor]:
        """Views of ``vector`` shaped as the parameters, then the float buffers (``grad`` holds only the former)."""
        shapes = self._shapes if vector.numel() > self.num_params else self._shapes[: len(self._params)]
        return [t.view(shape) for t, shape in zip(vector.split([s.numel() for s in shapes]), shapes, strict=True)]

    def _point_at(self, views: list[torch.Tensor]) -> None:
        """Make the model's parameters and float buffers these views (of one flat vector)."""
        for p, view in zip(self._params, views, strict=False):  # the parameters come first
            p.data = view
        for (module, name), view in zip(self._buffer_slots, views[len(self._params) :], strict=True):
            module._buffers[name] = view

    @property
    def params(self) -> torch.Tensor:
        """The parameter part of :attr:`vector` (a view)."""
        return self.vector[: self.num_params]

    def unflatten(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of a flat ``vector`` (parameters, then float buffers if present) keyed by qualified name."""
        out, offset = {}, 0
        tensors = [*self.model.parameters(), *(b for _, _, b in _buffers(self.model) if b.is_floating_point())]
        for name, ref in zip([*self.param_names, *self.buffer_names], tensors, strict=False):
            if offset >= vector.numel():
                break
            out[name] = vector[offset : offset + ref.numel()].view_as(ref)
            offset += ref.numel()
        return out

    def load_(self, vector: torch.Tensor, keep_current: bool = False) -> None:
        """Set every weight from a flat ``vector`` (integer buffers such as BN step counters are reset too).

        ``keep_current`` first moves the model onto a second flat vector (allocated once), so the weights it had
        stay intact, in the vector that :attr:`vector` was, until the next such load. That costs one more model's
        memory and lets a caller read the last client's weights while the next one trains.
        """
        if keep_current:
            if self._spare is None:
                spare = torch.empty_like(self.vector)
                self._spare = (spare, self._split(spare))
            (self.vector, self._views), self._spare = self._spare, (self.vector, self._views)
            self._point_at(self._views)
        self.vector.copy_(vector)
        for buf, saved in self._int_buffers:
            buf.copy_(saved)

    def zero_grad_(self) -> None:
        self.grad.zero_()

    def sgd_step_(self, lr: float) -> None:
        """One plain SGD step on every parameter."""
        self.params.add_(self.grad, alpha=-lr)


def _buffers(model: nn.Module):
    """(module, qualified name, tensor) of every buffer, in ``named_buffers`` order."""
    for prefix, module in model.named_modules():
        for name, buf in module._buffers.items():
            if buf is not None:
                yield module, f"{prefix}.{name}" if prefix else name, buf
