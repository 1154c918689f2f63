"""Running sums over a round's clients, in one preallocated flat buffer reduced with one all-reduce.

No list of client models is ever held: memory is O(model) whatever the number of clients.
"""

from __future__ import annotations

import torch

from copre_hub.fl.distributed import Processes

_PIECE = 1 << 16  # elements per piece of a mixed-dtype add on CPU: 512 KiB of float64, which stays in cache


class Accumulator:
    """Named slices (vectors and scalars) of one buffer that clients add into and processes sum once."""

    def __init__(self, sizes: dict[str, int], device: torch.device) -> None:
        self.sizes = dict(sizes)
        self.buffer = torch.zeros(sum(sizes.values()), device=device, dtype=torch.float64)
        self._slices: dict[str, slice] = {}
        offset = 0
        for name, size in sizes.items():
            self._slices[name] = slice(offset, offset + size)
            offset += size
        self._scratch: torch.Tensor | None = None  # one piece of float64, for mixed-dtype adds on CPU

    def zero_(self) -> Accumulator:
        self.buffer.zero_()
        return self

    def add_(self, name: str, value: torch.Tensor | float, weight: float = 1.0) -> None:
        """``sum[name] += weight * value`` (``value`` a flat vector or a number).

        On a CPU, a float32 vector is cast piece by piece into one preallocated float64 piece, then added: the CPU
        kernel would cast a mixed-dtype input through a temporary as large as the input (fresh pages every call),
        while the piece stays in cache. Same numbers (the cast is exact), several times faster for a ResNet-18.
        """
        if isinstance(value, torch.Tensor):
            target = self.buffer[self._slices[name]]
            if target.device.type == "cpu" and value.dtype != target.dtype:
                if self._scratch is None:
                    self._scratch = torch.empty(_PIECE, dtype=target.dtype)
                for piece, part in zip(target.split(_PIECE), value.split(_PIECE), strict=True):
                    cast = self._scratch[: part.numel()].copy_(part)
                    piece.add_(cast, alpha=weight)
            else:
                target.add_(value, alpha=weight)
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
