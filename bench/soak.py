"""Soak: match_node under a steady 30 Hz camera for N minutes, reliable and best effort.

The node runs in a child process (``python -m roma_ros.ros.node``, the real executable's code);
this process publishes 640x480 rgb8 frames at --rate and records every ~/matches cloud and
/diagnostics message. Per QoS mode it reports the node's RSS at start, middle and end, the
frame counters and whether they add up (received = processed + replaced + bad_frames +
failed + in_flight, and sent = received + lost_in_transport where sequence numbers exist),
end-to-end latency percentiles (publish -> cloud, from the frames that were processed) and
clouds per processed frame. Bounded: each mode stops after --minutes or --rate * 60 *
--minutes frames, whichever is first, and waits at most --settle seconds for the node.

    .venv/bin/python bench/soak.py --minutes 2 | tee bench/results/soak-cpu.txt
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from roma_ros.ros.rosenv import configure_local_dds

configure_local_dds()

import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image, PointCloud2  # noqa: E402

from roma_ros.ros.conversions import rgb_to_image_msg  # noqa: E402
from roma_ros.ros.health import adds_up  # noqa: E402
from roma_ros.core.imageio import save_rgb  # noqa: E402
from roma_ros.demo.photo_pairs import make_pair  # noqa: E402

PLACES = ("astronaut", "coffee", "chelsea")
COUNTERS = ("received", "processed", "replaced", "bad_frames", "failed", "in_flight")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Camera(Node):
    """Publishes frames and records the node's clouds (by stamp) and diagnostics."""

    def __init__(self, reliable: bool) -> None:
        super().__init__("soak_camera")
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)
        self.pub = self.create_publisher(Image, "/image", qos)
        self.sent_at: dict[int, float] = {}
        self.latencies: list[float] = []
        self.clouds = 0
        self.diagnostics: dict[str, str] = {}
        out = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.create_subscription(PointCloud2, "/roma_matcher/matches", self._on_cloud, out)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, out)

    def _on_cloud(self, cloud: PointCloud2) -> None:
        self.clouds += 1
        sent = self.sent_at.pop(cloud.header.stamp.sec * 10**9 + cloud.header.stamp.nanosec, None)
        if sent is not None:
            self.latencies.append(time.monotonic() - sent)

    def _on_diagnostics(self, array: DiagnosticArray) -> None:
        for status in array.status:
            if "roma_matcher" in status.name:
                self.diagnostics = {kv.key: kv.value for kv in status.values}

    def publish(self, msg: Image, number: int) -> None:
        msg.header.stamp.sec, msg.header.stamp.nanosec = 1000 + number, 0
        self.sent_at[(1000 + number) * 10**9] = time.monotonic()
        self.pub.publish(msg)


def wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def soak(qos: str, args: argparse.Namespace, folder: Path, frames: list[Image]) -> dict:
    params = {"model": args.model, "keyframes_dir": str(folder), "image_qos": qos, "min_inliers": 20,
              "ransac.threshold": 1.0, "diagnostics_period": 0.5, "debug.publish_image": False}
    cmd = [sys.executable, "-m", "roma_ros.ros.node", "--ros-args"]
    for key, value in params.items():
        cmd += ["-p", f"{key}:={value}"]
    log = tempfile.TemporaryFile()
    child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    camera = Camera(reliable=qos == "reliable")
    executor = SingleThreadedExecutor()
    executor.add_node(camera)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        if not wait(lambda: camera.diagnostics.get("state") == "ready" and camera.pub.get_subscription_count(), 120):
            log.seek(0)
            raise RuntimeError(f"node not ready: {camera.diagnostics} {log.read().decode()[-2000:]}")
        rss = {"start": rss_mb(child.pid)}
        limit = int(args.rate * 60 * args.minutes)
        period, start, sent = 1.0 / args.rate, time.monotonic(), 0
        while sent < limit and time.monotonic() - start < 60 * args.minutes:
            camera.publish(frames[sent % len(frames)], sent)
            sent += 1
            if sent == limit // 2:
                rss["middle"] = rss_mb(child.pid)
            time.sleep(max(0.0, start + sent * period - time.monotonic()))
        elapsed = time.monotonic() - start
        settled = wait(lambda: camera.diagnostics.get("in_flight") == "0"
                       and int(camera.diagnostics.get("received", -1)) > 0, args.settle)
        time.sleep(2 * params["diagnostics_period"])  # the clouds and diagnostics of the last frame
        rss["end"] = rss_mb(child.pid)
        diag = dict(camera.diagnostics)
    finally:
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
        executor.shutdown()
        camera.destroy_node()
    counts = {k: int(diag[k]) for k in COUNTERS}
    lost = diag.get("lost_in_transport", "")
    lat = np.array(camera.latencies) * 1000
    return {"qos": qos, "sent": sent, "seconds": elapsed, "settled": settled, "rss": rss, "counts": counts,
            "adds_up": adds_up(counts), "lost": lost,
            "transport_adds_up": (counts["received"] + int(lost) == sent) if lost.isdigit() else None,
            "latency_ms": {p: float(np.percentile(lat, p)) for p in (50, 90, 99)} if lat.size else {},
            "latency_max_ms": float(lat.max()) if lat.size else float("nan"),
            "clouds_per_processed": camera.clouds / max(counts["processed"], 1),
            "last_error": diag.get("last_error", "")}


def report(r: dict) -> None:
    c, rss = r["counts"], r["rss"]
    print(f"\n== {r['qos']}: {r['sent']} frames sent in {r['seconds']:.0f} s ({r['sent'] / r['seconds']:.1f} Hz)"
          f"{'' if r['settled'] else ' (node did not settle)'}")
    print(f"node RSS MB: start {rss['start']:.0f}, middle {rss.get('middle', float('nan')):.0f}, "
          f"end {rss['end']:.0f} (end/start {rss['end'] / rss['start']:.2f}x)")
    print("counters: " + ", ".join(f"{k} {v}" for k, v in c.items()) + f", lost_in_transport {r['lost']}")
    print(f"received = processed + replaced + bad_frames + failed + in_flight: {r['adds_up']}")
    if r["transport_adds_up"] is not None:
        print(f"sent = received + lost_in_transport: {r['transport_adds_up']} "
              f"({r['sent']} vs {c['received']} + {r['lost']})")
    lat = r["latency_ms"]
    if lat:
        print(f"latency publish -> cloud, ms: p50 {lat[50]:.0f}, p90 {lat[90]:.0f}, p99 {lat[99]:.0f}, "
              f"max {r['latency_max_ms']:.0f}")
    print(f"clouds per processed frame: {r['clouds_per_processed']:.3f}; "
          f"processed {c['processed'] / r['seconds']:.1f} Hz")
    if r["last_error"]:
        print(f"last_error: {r['last_error']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=2.0, help="per QoS mode")
    parser.add_argument("--rate", type=float, default=30.0, help="camera frames per second")
    parser.add_argument("--qos", default="reliable,sensor_data", help="comma-separated image_qos values")
    parser.add_argument("--model", default="classical", help="the node's model (RoMa needs weights or a GPU)")
    parser.add_argument("--settle", type=float, default=60.0, help="seconds to wait for the node after sending")
    args = parser.parse_args()
    rclpy.init()
    frames = [rgb_to_image_msg(make_pair(name, seed=11 + i).query) for i, name in enumerate(PLACES)]
    print(f"soak: {args.model}, {args.rate:g} Hz 640x480 rgb8 (~0.9 MB a frame), {args.minutes:g} min per mode, "
          f"Fast DDS profile {os.environ.get('FASTDDS_DEFAULT_PROFILES_FILE', 'default')}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "kf"
        for i, name in enumerate(PLACES):
            save_rgb(folder / f"{name}.png", make_pair(name, seed=11 + i).candidate)
        results = [soak(qos, args, folder, frames) for qos in args.qos.split(",")]
    for r in results:
        report(r)
    rclpy.try_shutdown()
    return 0 if all(r["adds_up"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
