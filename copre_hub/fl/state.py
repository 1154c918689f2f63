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
        self.vector = torch.cat([t.detach().reshape(-1) for t in tensors]).to(device)
        self.grad = torch.zeros(self.num_params, device=device)
        offset = 0
        for p in params:
            p.data = self.vector[offset : offset + p.numel()].view_as(p)
            p.grad = self.grad[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
        for module, name, buf in float_buffers:
            module._buffers[name.rsplit(".", 1)[-1]] = self.vector[offset : offset + buf.numel()].view_as(buf)
            offset += buf.numel()
        self._int_buffers = [(b, b.clone()) for _, _, b in _buffers(model) if not b.is_floating_point()]
        self.param_names = [n for n, _ in named_params]
        self.buffer_names = [n for _, n, _ in float_buffers]

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

    def load_(self, vector: torch.Tensor) -> None:
        """Set every weight from a flat ``vector`` (integer buffers such as BN step counters are reset too)."""
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
