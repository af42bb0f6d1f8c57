"""Multi-process extraction with ``torch.distributed`` (``torchrun``: several GPUs or machines).

Every rank opens the same model and dataset. Rank 0 decides which cache chunks are missing and
broadcasts the list; rank r computes every ``world``-th of them and writes them to its own cache
directory. Rank 0 then collects the chunks it cannot see on its disk (different machines) with
``gather_object``, writes the finished entry, and every rank returns the merged FeatureSet (read from a
shared cache when it can see it, else broadcast by rank 0). Works with NCCL (GPUs) and gloo (CPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

__all__ = ["DistContext", "PeerFailedError", "dist_context"]

T = TypeVar("T")


class PeerFailedError(RuntimeError):
    """Another rank of the process group failed; its error, in one line, is the message."""


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` as a list on rank 0 (None elsewhere)."""
        if not self.active:
            return [obj]
        out: list[Any] | None = [None] * self.world if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def all_gather(self, obj: Any) -> list[Any]:
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def together(self, work: Callable[[], T]) -> T:
        """``work()`` on this rank, then every rank learns whether any rank failed.

        Without this, a rank that raises leaves the others waiting in their next collective until torchrun
        tears the group down with a secondary "connection closed" error. Here the failing rank raises its
        own error and every other rank raises :class:`PeerFailedError` naming it. Interrupts
        (``KeyboardInterrupt``, SIGTERM) are not caught: torchrun stops every rank on those anyway.
        """
        if not self.active:
            return work()
        error: Exception | None = None
        try:
            result = work()
        except Exception as exc:  # noqa: BLE001 - re-raised below, after the others have been told
            error = exc
        outcomes = self.all_gather(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        failed = [(rank, msg) for rank, msg in enumerate(outcomes) if msg is not None]
        if failed:
            rank, msg = failed[0]
            more = f" (and {len(failed) - 1} more rank(s))" if len(failed) > 1 else ""
            raise PeerFailedError(f"rank {rank} of {self.world} failed{more}: {msg}")
        return result


def dist_context(mode: bool | str = "auto") -> DistContext:
    """The process group in use: an initialised one, or one started from torchrun's environment
    (``WORLD_SIZE`` > 1; NCCL when CUDA is available, else gloo). ``mode=False`` forces single-process."""
    if mode is False or not dist.is_available():
        return DistContext()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), local)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
        return DistContext(dist.get_rank(), dist.get_world_size(), local)
    return DistContext()
