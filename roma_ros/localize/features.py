"""Prepared keyframe features held in a least-recently-used cache bounded in bytes.

Why: every keyframe's dense features held at once (about 4 MB of DINOv2 per keyframe with
RoMa at 560, on the GPU) fill the card at a few thousand keyframes. The shortlist needs only
the global descriptors of all keyframes; the dense features of the top_k it picks are
fetched here, from memory when recently used, else prepared again (from the feature cache on
disk for RoMa, by SIFT for the classical matcher) and kept while the budget allows.
"""
from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np


def held_bytes(obj: Any, _seen: set[int] | None = None) -> int:
    """Bytes of the arrays and tensors inside a prepared keyframe (dataclasses, dicts,
    lists, tuples are walked; each buffer counted once)."""
    seen = set() if _seen is None else _seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    nelement = getattr(obj, "nelement", None)
    if callable(nelement) and hasattr(obj, "element_size"):  # a torch tensor, without importing torch
        return int(obj.nelement() * obj.element_size())
    if isinstance(obj, dict):
        return sum(held_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(held_bytes(v, seen) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(held_bytes(getattr(obj, f.name), seen) for f in dataclasses.fields(obj))
    return 0


@dataclasses.dataclass
class LruStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0


class FeatureLRU:
    """Prepared features by key, at most ``budget_bytes`` of them (0 = no bound). An entry
    larger than the whole budget is handed out but not kept."""

    def __init__(self, budget_bytes: int = 0) -> None:
        self.budget = int(budget_bytes)
        self.stats = LruStats()
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def put(self, key: Any, prepared: Any) -> None:
        size = held_bytes(prepared)
        with self._lock:
            if key in self._items:
                self._bytes -= self._items.pop(key)[1]
            if self.budget and size > self.budget:
                return
            self._items[key] = (prepared, size)
            self._bytes += size
            while self.budget and self._bytes > self.budget:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped
                self.stats.evictions += 1

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        """The features of ``key``; ``make()`` prepares them on a miss (and they are kept)."""
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                self.stats.hits += 1
                return found[0]
            self.stats.misses += 1
        prepared = make()
        self.put(key, prepared)
        return prepared
