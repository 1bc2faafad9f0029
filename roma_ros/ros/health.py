"""Frame accounting, cause-keyed log throttling and the node's health level (no ROS here).

Every frame that reaches the image callback ends in exactly one counter: ``skipped`` (no work
was wanted: on_demand mode with no ~/relocalize waiting, or continuous mode with nobody
subscribed), ``replaced`` (overwritten in the one-frame slot while the worker was busy or the
rate limit held it), ``processed``, ``bad_frames`` (the conversion rejected it) or ``failed`` (an
exception while matching), or it is still ``in_flight`` (waiting in the slot or being matched).
So at any moment ``received == processed + skipped + replaced + bad_frames + failed + in_flight``.

Frames lost inside DDS never reach the callback; where the middleware hands out publication
sequence numbers (rclpy on Iron and newer with Fast DDS) their gaps are ``lost_in_transport``.
"""
from __future__ import annotations

import collections
import enum
import threading
import time
from collections.abc import Hashable, Iterable

HEALTH_WINDOW = 10  # the level looks at the outcomes of this many most recent frames


class Outcome(enum.Enum):
    PROCESSED = "processed"
    BAD = "bad_frames"
    FAILED = "failed"


class Level(enum.IntEnum):
    """Same numbers as diagnostic_msgs/DiagnosticStatus."""

    OK = 0
    WARN = 1
    ERROR = 2


class FrameAccounting:
    """Thread-safe counters of the frames the node received and what became of each."""

    def __init__(self, window: int = HEALTH_WINDOW) -> None:
        self._lock = threading.Lock()
        self.received = self.replaced = self.in_flight = self.skipped = 0
        self._done = {outcome: 0 for outcome in Outcome}
        self._recent: collections.deque[Outcome] = collections.deque(maxlen=window)
        self._arrivals: collections.deque[float] = collections.deque(maxlen=1000)  # monotonic times

    def receive(self, replacing: bool, wanted: bool = True) -> None:
        """A frame reached the callback; ``replacing``: it overwrote one still waiting;
        not ``wanted``: no work was asked for, it is only counted."""
        with self._lock:
            self.received += 1
            self._arrivals.append(time.monotonic())
            if not wanted:
                self.skipped += 1
            elif replacing:
                self.replaced += 1
            else:
                self.in_flight += 1

    def finish(self, outcome: Outcome) -> None:
        """The worker is done with a frame it took from the slot."""
        with self._lock:
            self.in_flight -= 1
            self._done[outcome] += 1
            self._recent.append(outcome)

    def drop(self) -> None:
        """A frame waiting in the slot is thrown away because work stopped (deactivated, or the
        ~/relocalize it waited for ended): it counts as skipped."""
        with self._lock:
            self.in_flight -= 1
            self.skipped += 1

    def counts(self) -> dict[str, int]:
        """A consistent snapshot: received, processed, replaced, bad_frames, failed, in_flight."""
        with self._lock:
            return {"received": self.received, "processed": self._done[Outcome.PROCESSED],
                    "skipped": self.skipped, "replaced": self.replaced, "bad_frames": self._done[Outcome.BAD],
                    "failed": self._done[Outcome.FAILED], "in_flight": self.in_flight}

    def input_rate(self, window: float = 10.0, now: float | None = None) -> float:
        """Frames that reached the callback per second over the last ``window`` seconds."""
        now = time.monotonic() if now is None else now
        with self._lock:
            return sum(now - t < window for t in self._arrivals) / window

    def since_last_frame(self, now: float | None = None) -> float | None:
        """Seconds since the last frame reached the callback; None before the first."""
        now = time.monotonic() if now is None else now
        with self._lock:
            return now - self._arrivals[-1] if self._arrivals else None

    def level(self) -> tuple[Level, str]:
        """WARN while any of the last frames was bad or failed; ERROR when all of the last
        ``window`` were. The text says which (empty when OK)."""
        with self._lock:
            recent = list(self._recent)
        failures = sum(outcome is not Outcome.PROCESSED for outcome in recent)
        if failures == 0:
            return Level.OK, ""
        text = f"{failures} of the last {len(recent)} frames bad or failed"
        if failures == len(recent) == self._recent.maxlen:
            return Level.ERROR, text
        return Level.WARN, text


def adds_up(counts: dict[str, int]) -> bool:
    """True when every received frame is in exactly one counter."""
    return counts["received"] == sum(counts.get(k, 0) for k in ("processed", "skipped", "replaced", "bad_frames",
                                                                "failed", "in_flight"))


class SequenceGaps:
    """Counts frames missing between publication sequence numbers, per publisher.

    A number at or below the last one seen from that publisher means it restarted: the count
    starts again from there. Without a publisher id (rclpy before Kilted) all frames count as
    one publisher, which over-counts when several publish on the topic.
    """

    def __init__(self) -> None:
        self.lost = 0
        self.seen = False  # any sequence number at all (the middleware provides them)
        self._last: dict[Hashable, int] = {}

    def observe(self, sequence: int | None, publisher: Hashable = None) -> int:
        """Record one received frame; returns how many frames went missing just before it."""
        if sequence is None:
            return 0
        self.seen = True
        last = self._last.get(publisher)
        self._last[publisher] = sequence
        if last is None or sequence <= last:
            return 0
        missing = sequence - last - 1
        self.lost += missing
        return missing


class LogThrottle:
    """At most one log line per cause per ``period`` seconds, from a fixed set of causes.

    Keyed on a cause the node names, never on the message text (which a publisher controls,
    so distinct texts could flood the log and a shared prefix could hide another error).
    """

    def __init__(self, causes: Iterable[Hashable], period: float) -> None:
        self.period = period
        self._last: dict[Hashable, float] = {cause: -float("inf") for cause in causes}
        self._suppressed: dict[Hashable, int] = dict.fromkeys(self._last, 0)

    def allow(self, cause: Hashable, now: float | None = None) -> int | None:
        """None while ``cause`` is throttled; else how many lines it suppressed since the last."""
        if cause not in self._last:
            raise KeyError(f"unknown log cause {cause!r}: add it to the throttle's fixed set")
        now = time.monotonic() if now is None else now
        if now - self._last[cause] < self.period:
            self._suppressed[cause] += 1
            return None
        self._last[cause] = now
        suppressed, self._suppressed[cause] = self._suppressed[cause], 0
        return suppressed
