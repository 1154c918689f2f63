"""Running sums over a round's clients, in one preallocated flat buffer reduced with one all-reduce.

No list of client models is ever held: memory is O(model) whatever the number of clients.
"""

from __future__ import annotations

import torch

from copre_hub.fl.distributed import Processes


class Accumulator:
    """Named slices (vectors and scalars) of one buffer that clients add into and processes sum once."""

    def __init__(self, sizes: dict[str, int], device: torch.device) -> None:
        self.buffer = torch.zeros(sum(sizes.values()), device=device, dtype=torch.float64)
        self._slices: dict[str, slice] = {}
        offset = 0
        for name, size in sizes.items():
            self._slices[name] = slice(offset, offset + size)
            offset += size
        self._vectors: dict[str, torch.Tensor] = {}

    def zero_(self) -> Accumulator:
        self.buffer.zero_()
        return self

    def add_(self, name: str, value: torch.Tensor | float, weight: float = 1.0) -> None:
        """``sum[name] += weight * value``."""
        if isinstance(value, torch.Tensor):
            self.buffer[self._slices[name]].add_(value, alpha=weight)
        else:
            self.buffer[self._slices[name]] += weight * value

    def reduce_(self, processes: Processes) -> Accumulator:
        """Sum every slice over processes (one collective call)."""
        processes.all_reduce_(self.buffer)
        return self

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.buffer[self._slices[name]]

    def scalar(self, name: str) -> float:
        return float(self.buffer[self._slices[name]][0])
