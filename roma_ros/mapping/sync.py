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
    """The last ``maxlen`` (stamp, item) pairs; thread-safe (callbacks add, a service looks up)."""

    def __init__(self, maxlen: int) -> None:
        self._items: collections.deque[tuple[int, T]] = collections.deque(maxlen=maxlen)
        self._lock = threading.Lock()

    def add(self, stamp: Any, item: T) -> None:
        with self._lock:
            self._items.append((stamp_ns(stamp), item))

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
