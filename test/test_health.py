"""Frame accounting, the cause-keyed log throttle and the health level (health.py, no ROS)."""
from __future__ import annotations

import threading

import pytest

from roma_ros.ros.health import FrameAccounting, Level, LogThrottle, Outcome, SequenceGaps, adds_up


def test_every_frame_ends_in_one_counter():
    frames = FrameAccounting()
    frames.receive(replacing=False)  # waits in the slot
    frames.receive(replacing=True)  # overwrites it
    assert frames.counts() == {"received": 2, "processed": 0, "skipped": 0, "replaced": 1, "bad_frames": 0,
                               "failed": 0, "in_flight": 1}
    frames.finish(Outcome.PROCESSED)
    for outcome in (Outcome.BAD, Outcome.FAILED):
        frames.receive(replacing=False)
        frames.finish(outcome)
    frames.receive(replacing=False, wanted=False)  # no work asked for: only counted
    counts = frames.counts()
    assert counts == {"received": 5, "processed": 1, "skipped": 1, "replaced": 1, "bad_frames": 1, "failed": 1,
                      "in_flight": 0}
    assert adds_up(counts)
    assert not adds_up(counts | {"processed": 2}) and not adds_up(counts | {"skipped": 0})


def test_input_rate_and_time_since_the_last_frame():
    frames = FrameAccounting()
    assert frames.since_last_frame() is None and frames.input_rate() == 0.0
    for _ in range(5):
        frames.receive(replacing=False, wanted=False)
    now = frames._arrivals[-1]
    assert frames.input_rate(window=10.0, now=now) == 0.5
    assert frames.input_rate(window=10.0, now=now + 11.0) == 0.0
    assert frames.since_last_frame(now=now + 3.0) == pytest.approx(3.0)


def test_counts_add_up_under_concurrent_callbacks():
    frames = FrameAccounting()
    slot = threading.Lock()
    pending = [False]

    def callback() -> None:
        for _ in range(2000):
            with slot:
                frames.receive(replacing=pending[0])
                pending[0] = True

    def worker(stop: threading.Event) -> None:
        while not stop.is_set() or pending[0]:
            with slot:
                took, pending[0] = pending[0], False
            if took:
                frames.finish(Outcome.PROCESSED)

    stop = threading.Event()
    threads = [threading.Thread(target=callback) for _ in range(2)]
    consumer = threading.Thread(target=worker, args=(stop,))
    consumer.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    consumer.join()
    counts = frames.counts()
    assert counts["received"] == 4000 and counts["in_flight"] == 0 and adds_up(counts)


def test_level_warns_on_failures_and_errors_when_all_recent_failed():
    frames = FrameAccounting(window=4)
    assert frames.level() == (Level.OK, "")
    for outcome in (Outcome.PROCESSED, Outcome.FAILED):
        frames.receive(False)
        frames.finish(outcome)
    level, text = frames.level()
    assert level is Level.WARN and text == "1 of the last 2 frames bad or failed"
    for outcome in (Outcome.BAD, Outcome.FAILED, Outcome.FAILED):
        frames.receive(False)
        frames.finish(outcome)
    assert frames.level()[0] is Level.ERROR  # the last 4 all failed
    for _ in range(4):
        frames.receive(False)
        frames.finish(Outcome.PROCESSED)
    assert frames.level() == (Level.OK, "")  # recovered


def test_three_failures_before_the_window_fills_are_only_a_warning():
    frames = FrameAccounting(window=10)
    for _ in range(3):
        frames.receive(False)
        frames.finish(Outcome.FAILED)
    assert frames.level()[0] is Level.WARN


def test_sequence_gaps_per_publisher_and_restarts():
    gaps = SequenceGaps()
    assert gaps.observe(None) == 0 and not gaps.seen  # no sequence numbers: nothing known
    assert [gaps.observe(s, "a") for s in (1, 2, 5, 6)] == [0, 0, 2, 0]
    assert gaps.observe(10, "b") == 0  # another publisher starts its own count
    assert gaps.observe(7, "a") == 0 and gaps.observe(12, "b") == 1
    assert gaps.observe(1, "a") == 0  # a restarted publisher does not count as loss
    assert gaps.lost == 3 and gaps.seen


def test_throttle_is_keyed_by_a_fixed_set_of_causes():
    throttle = LogThrottle(("bad_frame", "model"), period=10.0)
    assert throttle.allow("bad_frame", now=0.0) == 0
    assert throttle.allow("bad_frame", now=1.0) is None  # same cause, whatever the text
    assert throttle.allow("model", now=1.0) == 0  # another cause is not hidden
    assert throttle.allow("bad_frame", now=2.0) is None
    assert throttle.allow("bad_frame", now=10.5) == 2  # reports what it held back
    with pytest.raises(KeyError, match="unknown log cause"):
        throttle.allow("skipped a frame: unsupported encoding 'x'", now=20.0)
