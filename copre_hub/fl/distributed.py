"""Processes of a simulation: rank, device, mixed precision and the one all-reduce per quantity.

Every process simulates a share of each round's participants (balanced by data size), then the shares are summed
with a single flattened all-reduce. Processes are started by ``accelerate launch`` (:func:`launch_command`) or
``torchrun``; the model is never wrapped in DDP, because processes train different clients.
"""

from __future__ import annotations

import atexit
import contextlib
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class Processes:
    """This process's place in the simulation."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    mixed_precision: str = "no"

    @classmethod
    def from_accelerate(cls, cpu: bool = False, mixed_precision: str = "no") -> Processes:
        """Join the processes started by ``accelerate launch``/``torchrun`` (or run alone when there are none).

        Without CUDA, processes join as CPU processes over gloo (Accelerate would otherwise ignore the launch).
        """
        from accelerate import PartialState

        state = PartialState(cpu=cpu or not torch.cuda.is_available())
        if state.device.type == "cpu" and mixed_precision == "bf16":
            mixed_precision = "no"
        if state.num_processes > 1:
            atexit.register(_leave_process_group)
        return cls(state.process_index, state.num_processes, state.device, mixed_precision)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over processes, in place; a no-op for one process."""
        if self.world_size > 1:
            torch.distributed.all_reduce(tensor)
        return tensor

    def broadcast_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Overwrite ``tensor`` with rank 0's copy."""
        if self.world_size > 1:
            torch.distributed.broadcast(tensor, src=0)
        return tensor

    def share(self, items: Sequence[int], costs: Sequence[float]) -> list[int]:
        """This process's items: greedy longest-first assignment to the least-loaded process (deterministic)."""
        if self.world_size == 1:
            return list(items)
        loads = [0.0] * self.world_size
        mine = []
        for cost, item in sorted(zip(costs, items, strict=True), key=lambda ci: (-ci[0], ci[1])):
            target = min(range(self.world_size), key=lambda r: (loads[r], r))
            loads[target] += cost
            if target == self.rank:
                mine.append(item)
        return sorted(mine)

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on accelerators when asked for, otherwise nothing."""
        if self.mixed_precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()


def is_main_process() -> bool:
    """Whether this process is the one that reports (prints summaries and paths): the main one of the processes
    ``accelerate launch``/torchrun started, or the only one; the others stay silent so a line is printed once."""
    from accelerate import PartialState

    return PartialState().is_main_process


def _leave_process_group() -> None:
    """Destroy the process group while the interpreter is still whole.

    Left to interpreter teardown, gloo's worker threads can abort the process ("terminate called without an active
    exception", SIGABRT) after its work is done, and the launcher then fails the whole run.
    """
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def launch_command(
    num_processes: int,
    port: int,
    *,
    num_machines: int = 1,
    machine_rank: int = 0,
    main_ip: str = "127.0.0.1",
) -> list[str]:
    """``accelerate launch`` with this interpreter, starting ``num_processes`` processes in all (over
    ``num_machines`` machines, this one being ``machine_rank``) that meet at ``main_ip:port``; append the script and
    its arguments.

    ``--multi_gpu`` is what makes Accelerate start several processes even without CUDA (they then join over gloo,
    see :meth:`Processes.from_accelerate`). Mixed precision and dynamo are given, so no Accelerate config file
    changes the run.
    """
    machines = ["--num_machines", str(num_machines)]
    if num_machines > 1:
        machines += ["--machine_rank", str(machine_rank), "--main_process_ip", main_ip]
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(num_processes),
        *machines,
        "--main_process_port",
        str(port),
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now, e.g. for :func:`launch_command` (another process may take it before use)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
