"""Pairing depth frames and keyframe poses with an image by stamp (roma_ros.mapping.sync)."""
from __future__ import annotations

from builtin_interfaces.msg import Time

from roma_ros.mapping.sync import StampBuffer, stamp_ns


def test_nearest_within_tolerance_and_bounded():
    buffer: StampBuffer[str] = StampBuffer(maxlen=3)
    empty = buffer.nearest(Time(sec=5), 0.05)
    assert empty.item is None and empty.count == 0
    assert empty.why_missing("depth frame", 0.05) == "no depth frame received"
    for i, name in enumerate("abcd"):
        buffer.add(Time(sec=10 + i, nanosec=0), name)
    assert len(buffer) == 3  # 'a' fell out
    assert buffer.nearest(Time(sec=11, nanosec=30_000_000), 0.05).item == "b"
    hit = buffer.nearest(Time(sec=12, nanosec=960_000_000), 0.05)
    assert hit.item == "d" and abs(hit.offset_s - 0.04) < 1e-9
    miss = buffer.nearest(Time(sec=10), 0.05)
    assert miss.item is None and miss.offset_s == 1.0 and miss.count == 3
    assert miss.why_missing("keyframe_pose", 0.05) == "no keyframe_pose within 0.05 s of the image (nearest 1.000 s away)"
    assert buffer.nearest(Time(sec=11, nanosec=500_000_000), 0.5).item == "c"  # a tie goes to the later one
    assert stamp_ns(Time(sec=2, nanosec=5)) == 2_000_000_005 == stamp_ns(2_000_000_005)
