"""Data plumbing for the training loops: view datasets, deterministic step plans, loaders.

The order of training items is a pure function of (seed, step): a stream of per-epoch permutations cut
into global batches (:class:`StepPlan`). A run resumed at step ``s`` therefore sees exactly the batches an
uninterrupted run would have seen from ``s`` on, and under DDP every rank takes its own slice of the same
global batch, so the union over ranks is the single-process batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..data import CorruptImageError, ImageDataset
from .views import AugRecipe, ViewRenderer, make_view

__all__ = ["Batch", "StepPlan", "ViewDataset", "cached_view_policy", "fresh_view_policy", "make_loader"]


# ------------------------------------------------------------------------------------------------
# datasets of views
# ------------------------------------------------------------------------------------------------
class ViewDataset(torch.utils.data.Dataset):
    """``ds[(index, view_id)] -> (tensor, index, view_id, label)``; unreadable items come back as errors."""

    def __init__(self, ds: ImageDataset, renderer: ViewRenderer, seed: int, recipe: AugRecipe,
                 digests: Sequence[str] | None = None):
        self.ds, self.renderer, self.seed, self.recipe = ds, renderer, int(seed), recipe
        self.digests = list(digests) if digests is not None else list(ds.item_digests())

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Any, int, int, int, str | None]:
        i, v = int(key[0]), int(key[1])
        label = int(self.ds.targets[i]) if len(self.ds.targets) else -1
        try:
            img = self.ds.load(i)
        except CorruptImageError as exc:
            return None, i, v, label, str(exc)
        view = make_view(self.digests[i], v, self.seed, self.recipe)
        return self.renderer(img, view), i, v, label, None


@dataclass
class Batch:
    x: torch.Tensor | None
    index: torch.Tensor
    view: torch.Tensor
    label: torch.Tensor
    bad: list[tuple[int, str]]

    def pin_memory(self) -> Batch:
        if self.x is not None:
            self.x = self.x.pin_memory()
        return self

    def __len__(self) -> int:
        return 0 if self.x is None else int(self.x.shape[0])


def collate(items: list[tuple[Any, int, int, int, str | None]]) -> Batch:
    good = [it for it in items if it[0] is not None]
    bad = [(it[1], str(it[4])) for it in items if it[0] is None]
    x = torch.stack([it[0] for it in good]) if good else None
    idx = torch.tensor([it[1] for it in good], dtype=torch.long)
    view = torch.tensor([it[2] for it in good], dtype=torch.long)
    if good and isinstance(good[0][3], torch.Tensor):  # segmentation: (H, W) masks
        label = torch.stack([it[3] for it in good])
    else:
        label = torch.tensor([it[3] for it in good], dtype=torch.long)
    return Batch(x, idx, view, label, bad)


def make_loader(dataset: ViewDataset, batches: Sequence[list[tuple[int, int]]] | Iterator[list[tuple[int, int]]],
                num_workers: int, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader over explicit micro-batches of ``(index, view_id)`` keys (kept in order)."""
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=collate,
                                       pin_memory=pin_memory, prefetch_factor=4 if num_workers > 0 else None,
                                       persistent_workers=False)


# ------------------------------------------------------------------------------------------------
# which view an item shows in a given epoch
# ------------------------------------------------------------------------------------------------
def cached_view_policy(views: int, n: int, seed: int) -> Callable[[int, int], int]:
    """One of the ``views`` cached views per (item, epoch), drawn uniformly (the teacher saw all of them)."""
    memo: dict[int, np.ndarray] = {}

    def policy(i: int, epoch: int) -> int:
        if views == 1:
            return 0
        arr = memo.get(epoch)
        if arr is None:
            if len(memo) > 4:
                memo.clear()
            arr = memo[epoch] = np.random.default_rng([int(seed), 7919, int(epoch)]).integers(0, views, size=n)
        return int(arr[i])

    return policy


def fresh_view_policy(seed: int) -> Callable[[int, int], int]:
    """A new random view for every (item, epoch) (labeled fine-tuning: nothing is cached)."""

    def policy(i: int, epoch: int) -> int:
        h = hashlib.blake2b(f"{seed}|{i}|{epoch}".encode(), digest_size=4).digest()
        return 1 + int.from_bytes(h, "little") % (2**31 - 2)

    return policy


# ------------------------------------------------------------------------------------------------
# deterministic order
# ------------------------------------------------------------------------------------------------
class StepPlan:
    """Global batches of a stream of per-epoch permutations of ``range(n)``.

    Step ``s`` holds stream positions ``[s*B, (s+1)*B)``; position ``p`` is item ``perm_e[p % n]`` of epoch
    ``e = p // n`` with ``perm_e`` seeded by ``(seed, e)``. Batches may straddle epochs; nothing is dropped.
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        if n < 1:
            raise ValueError("cannot train on an empty dataset")
        self.n, self.batch_size, self.seed = int(n), int(batch_size), int(seed)
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        p = self._perms.get(epoch)
        if p is None:
            if len(self._perms) > 4:
                self._perms.clear()
            p = np.random.default_rng([self.seed, 104729, int(epoch)]).permutation(self.n)
            self._perms[epoch] = p
        return p

    def batch(self, step: int) -> list[tuple[int, int]]:
        """``[(item, epoch), ...]`` of the global batch of ``step``."""
        lo = step * self.batch_size
        out = []
        for p in range(lo, lo + self.batch_size):
            e = p // self.n
            out.append((int(self._perm(e)[p % self.n]), e))
        return out

    def epoch_of(self, step: int) -> float:
        return step * self.batch_size / self.n

    def micro_batches(self, step: int, rank: int, world: int, accum: int,
                      policy: Callable[[int, int], int]) -> list[list[tuple[int, int]]]:
        """This rank's ``accum`` micro-batches of ``(item, view_id)`` for ``step``."""
        per = world * accum
        if self.batch_size % per:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by world_size x grad_accum = {per}")
        mb = self.batch_size // per
        g = self.batch(step)
        out = []
        for a in range(accum):
            lo = (a * world + rank) * mb
            out.append([(i, policy(i, e)) for i, e in g[lo:lo + mb]])
        return out
