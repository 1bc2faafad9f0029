"""Pairing messages by stamp: small, bounded buffers of recent depth frames and poses.

``~/add_keyframe`` stores the latest image with the depth frame and the keyframe pose
whose stamps lie within ``sync_tolerance`` of the image's. Both arrive on their own
topics at their own rates, so the node keeps the last few of each here (bounded: a
depth stream at 30 Hz must not grow memory) and looks up the nearest one. No ROS here:
stamps are anything with ``sec`` and ``nanosec``, or integer nanoseconds.
"""
from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def stamp_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (or an int of nanoseconds) -> integer nanoseconds."""
    if isinstance(stamp, int):
        return stamp
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


@dataclass
class Lookup(Generic[T]):
    item: T | None  # the nearest entry within the tolerance; None when there is none
    offset_s: float | None  # |stamp difference| of the nearest entry, in range or not; None: buffer empty
    count: int  # entries the buffer held

    def why_missing(self, what: str, tolerance_s: float) -> str:
        if self.count == 0:
            return f"no {what} received"
        return f"no {what} within {tolerance_s:g} s of the image (nearest {self.offset_s:.3f} s away)"


class StampBuffer(Generic[T]):
    """The last ``maxlen`` (stamp, item) pairs; thread-safe (callbacks add, a service looks up).

    With ``max_bytes`` (and ``size_of``, an item's size in bytes) it is bounded by bytes too:
    the oldest items go first, and an item larger than the whole budget is refused."""

    def __init__(self, maxlen: int, max_bytes: int | None = None,
                 size_of: Callable[[T], int] | None = None) -> None:
        self._items: collections.deque[tuple[int, T]] = collections.deque()
        self._sizes: collections.deque[int] = collections.deque()
        self._maxlen, self._max_bytes = maxlen, max_bytes
        self._size_of = size_of or (lambda item: 0)
        self._lock = threading.Lock()

    def add(self, stamp: Any, item: T) -> None:
        """Keep ``item``; ValueError (saying why) when it alone is over ``max_bytes``."""
        size = int(self._size_of(item))
        if self._max_bytes is not None and size > self._max_bytes:
            raise ValueError(f"{size / 2**20:.1f} MiB is more than the buffer's {self._max_bytes / 2**20:.0f} MiB")
        with self._lock:
            self._items.append((stamp_ns(stamp), item))
            self._sizes.append(size)
            while len(self._items) > self._maxlen or (
                    self._max_bytes is not None and sum(self._sizes) > self._max_bytes):
                self._items.popleft()
                self._sizes.popleft()

    @property
    def nbytes(self) -> int:
        """The held items' total size (by ``size_of``)."""
        with self._lock:
            return sum(self._sizes)

    def __len__(self) -> int:
        return len(self._items)

    def nearest(self, stamp: Any, tolerance_s: float) -> Lookup[T]:
        """The entry whose stamp is nearest ``stamp``, if at most ``tolerance_s`` away (ties: the later)."""
        target = stamp_ns(stamp)
        with self._lock:
            items = list(self._items)
        if not items:
            return Lookup(None, None, 0)
        offset, _, index = min((abs(ns - target), -ns, i) for i, (ns, _) in enumerate(items))
        offset_s = offset / 1e9
        return Lookup(items[index][1] if offset_s <= tolerance_s else None, offset_s, len(items))
