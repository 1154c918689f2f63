"""Client-side SGD with momentum, Nesterov and weight decay: ``torch.optim.SGD``'s update, on gradients passed in.

FL clients keep no optimiser state between rounds (a client may not be sampled again, and the server sends only
weights), so a :class:`LocalSGD` lives for one local update: its momentum buffers start fresh every round. The
defaults (no momentum, no weight decay) are the paper's plain SGD and leave the update ``w -= lr * g`` bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from copre_hub.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class SGDSettings:
    """Momentum, Nesterov and (coupled, L2) weight decay, as ``torch.optim.SGD`` defines them (dampening 0)."""

    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        check_sgd_settings(self.momentum, self.nesterov, self.weight_decay, where="")

    @property
    def is_plain(self) -> bool:
        """Whether this is plain SGD (the paper's optimiser)."""
        return self.momentum == 0 and self.weight_decay == 0


def check_sgd_settings(momentum: float, nesterov: bool, weight_decay: float, where: str) -> None:
    """Refuse settings ``torch.optim.SGD`` would refuse, naming the key as ``{where}momentum`` etc.

    Raises:
        ConfigError: momentum outside [0, 1), negative weight decay, or Nesterov without momentum.
    """
    if not 0 <= momentum < 1:
        raise ConfigError(f"{where}momentum must be in [0, 1), got {momentum}.")
    if weight_decay < 0:
        raise ConfigError(f"{where}weight_decay cannot be negative, got {weight_decay}.")
    if nesterov and momentum == 0:
        raise ConfigError(f"{where}nesterov needs {where}momentum above 0 (got momentum 0).")


PLAIN_SGD = SGDSettings()


class LocalSGD:
    """One local update's optimiser over ``params``; ``buffers`` (same shapes) hold the momentum when it is used.

    ``step(grads)`` does what ``torch.optim.SGD.step`` does with those gradients: ``g += wd * w``; on the first
    step ``b = g``, later ``b = momentum * b + g``; ``g = g + momentum * b`` (Nesterov) or ``g = b``; ``w -= lr * g``.
    The buffers are scratch space owned by the caller (reused across clients, overwritten on the first step).
    """

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        lr: float,
        settings: SGDSettings,
        buffers: Sequence[torch.Tensor] | None = None,
    ) -> None:
        if settings.momentum and buffers is None:
            raise ValueError("momentum needs buffers")
        self.params = list(params)
        self.lr = lr
        self.settings = settings
        self.buffers = list(buffers) if buffers is not None else []
        self._started = False

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor]) -> None:
        """Apply one update with ``grads`` (one per parameter)."""
        s = self.settings
        if s.weight_decay:
            grads = torch._foreach_add(grads, self.params, alpha=s.weight_decay)
        if s.momentum:
            if self._started:
                torch._foreach_mul_(self.buffers, s.momentum)
                torch._foreach_add_(self.buffers, grads)
            else:
                torch._foreach_copy_(self.buffers, grads)
                self._started = True
            grads = torch._foreach_add(grads, self.buffers, alpha=s.momentum) if s.nesterov else self.buffers
        torch._foreach_add_(self.params, grads, alpha=-self.lr)
