"""Test harness: a probe node that talks to roma_matcher over real DDS (loopback only)."""
from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseArray
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image, PointCloud2
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from roma_ros.ros.conversions import rgb_to_image_msg

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> int:
    """SIGINT, as launch and Ctrl-C stop a node, and its exit code; killed (and the test failed)
    when it does not stop within ``timeout`` s."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


class Probe(Node):
    """Publishes queries and records everything roma_matcher publishes."""

    def __init__(self, target: str = "/roma_matcher", image_topic: str = "/image") -> None:
        super().__init__("roma_test_probe")
        self.clouds: list[PointCloud2] = []
        self.markers: list[MarkerArray] = []
        self.diagnostics: list[DiagnosticArray] = []
        self.keyframes: list[PoseArray] = []
        self.keyframes_added: list[PoseArray] = []
        self.debug: list[Image] = []
        self.pub_image = self.create_publisher(Image, image_topic, RELIABLE)
        self.pub_compressed = self.create_publisher(CompressedImage, image_topic + "/compressed", RELIABLE)
        self.create_subscription(PointCloud2, f"{target}/matches", self.clouds.append, RELIABLE)
        self.create_subscription(MarkerArray, f"{target}/markers", self.markers.append, RELIABLE)
        self.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, RELIABLE)
        self.create_subscription(PoseArray, f"{target}/keyframes", self.keyframes.append, LATCHED)
        self.create_subscription(PoseArray, f"{target}/keyframes_added", self.keyframes_added.append, RELIABLE)
        self.create_subscription(Image, f"{target}/debug_image", self.debug.append, 1)
        self.add_client = self.create_client(Trigger, f"{target}/add_keyframe")
        self.reload_client = self.create_client(Trigger, f"{target}/reload_keyframes")
        self._stamp = 0

    def next_header_stamp(self):
        self._stamp += 1
        return rclpy.time.Time(seconds=1000 + self._stamp).to_msg()

    def send(self, rgb=None, msg=None, timeout: float = 60.0) -> PointCloud2:
        """Publish one query and wait for the cloud answering it (matched by stamp)."""
        if msg is None:
            msg = rgb_to_image_msg(rgb)
        msg.header.stamp = self.next_header_stamp()
        msg.header.frame_id = "camera"
        stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        wait_for(lambda: self.pub_image.get_subscription_count() + self.pub_compressed.get_subscription_count(),
                 20, "the node's image subscription")
        (self.pub_compressed if isinstance(msg, CompressedImage) else self.pub_image).publish(msg)
        return wait_for(lambda: next((c for c in self.clouds if (c.header.stamp.sec, c.header.stamp.nanosec) == stamp),
                                     None), timeout, "the matches cloud for the query")

    def call(self, client, timeout: float = 60.0) -> Trigger.Response:
        wait_for(client.service_is_ready, 20, f"service {client.srv_name}")
        future = client.call_async(Trigger.Request())
        return wait_for(lambda: future.result() if future.done() else None, timeout, client.srv_name)

    def latest_diagnostics(self, node_name: str = "roma_matcher") -> dict[str, str]:
        for array in reversed(self.diagnostics):
            for status in array.status:
                if node_name in status.name:
                    level = status.level if isinstance(status.level, int) else ord(status.level)
                    return {kv.key: kv.value for kv in status.values} | {"_level": level,
                                                                          "_message": status.message}
        return {}


class Spinner:
    """Spins nodes on a background executor for the duration of a test."""

    def __init__(self, *nodes: Node) -> None:
        self.nodes = nodes
        self.executor = MultiThreadedExecutor(num_threads=4)
        for node in nodes:
            self.executor.add_node(node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.executor.shutdown()
        self.thread.join(timeout=5)

    def shut_down(self) -> None:
        """Stop spinning, then destroy the nodes it spun, in the order given."""
        self.stop()
        for node in self.nodes:
            node.destroy_node()
