"""Running sums over a round's clients, in one preallocated flat buffer reduced with one all-reduce.

No list of client models is ever held: memory is O(model) whatever the number of clients.
"""

from __future__ import annotations

import torch

from copre_hub.fl.distributed import Processes

_PIECE = 1 << 16  # elements per piece of a mixed-dtype add on CPU: 512 KiB of float64, which stays in cache

_Term = tuple[torch.Tensor, float]  # (value, weight) of one add


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
        self._deferred: dict[str, _Term] = {}  # at most one add per slice, waiting to be paired with the next

    def zero_(self) -> Accumulator:
        self._deferred.clear()
        self.buffer.zero_()
        return self

    def add_(self, name: str, value: torch.Tensor | float, weight: float = 1.0, defer: bool = False) -> None:
        """``sum[name] += weight * value`` (``value`` a flat vector or a number).

        On a CPU, a float32 vector is cast piece by piece into one preallocated float64 piece, then added: the CPU
        kernel would cast a mixed-dtype input through a temporary as large as the input (fresh pages every call),
        while the piece stays in cache. Same numbers (the cast is exact), several times faster for a ResNet-18.

        ``defer`` promises that ``value`` stays unchanged until the next add into ``name`` or the next read,
        reduce or zero. Such an add on a CPU waits for the next one into ``name``, and both go through the sum in
        one pass, each piece of it added to twice while in cache: the same operations in the same order (so the
        same bits) for 0.7-0.9 of the time of two passes (resnet18, measured on two 2-core VMs).
        """
        target = self.buffer[self._slices[name]]
        waiting = self._deferred.pop(name, None)
        if isinstance(value, torch.Tensor) and target.device.type == "cpu" and value.dtype != target.dtype:
            if defer and waiting is None:
                self._deferred[name] = (value, weight)
                return
            self._add_cast_(target, [*([waiting] if waiting else []), (value, weight)])
            return
        if waiting is not None:
            self._add_cast_(target, [waiting])
        if isinstance(value, torch.Tensor):
            target.add_(value, alpha=weight)
        else:
            target += weight * value

    def _add_cast_(self, target: torch.Tensor, terms: list[_Term]) -> None:
        """``target += w * v`` for each ``(v, w)`` in order, piece by piece through the float64 scratch piece."""
        if self._scratch is None:
            self._scratch = torch.empty(_PIECE, dtype=target.dtype)
        parts = [value.split(_PIECE) for value, _ in terms]
        for i, piece in enumerate(target.split(_PIECE)):
            for (_, weight), split in zip(terms, parts, strict=True):
                piece.add_(self._scratch[: piece.numel()].copy_(split[i]), alpha=weight)

    def _settle_(self) -> None:
        """Carry out every deferred add (before the sums are read or reduced)."""
        for name, term in self._deferred.items():
            self._add_cast_(self.buffer[self._slices[name]], [term])
        self._deferred.clear()

    def reduce_(self, processes: Processes) -> Accumulator:
        """Sum every slice over processes (one collective call)."""
        self._settle_()
        processes.all_reduce_(self.buffer)
        return self

    def __getitem__(self, name: str) -> torch.Tensor:
        self._settle_()
        return self.buffer[self._slices[name]]

    def scalar(self, name: str) -> float:
        return float(self[name][0])
