"""match_node's lifecycle (rclpy.lifecycle, Humble and newer): what each transition does.

- configure: create the (lifecycle) publishers, load the model and the keyframes. The loading
  runs in the worker thread; the transition waits for it while the executor's other threads go
  on (``/diagnostics`` says "loading model"). A model that does not load fails the transition.
- activate: create the subscriptions, enable the publishers, start work.
- deactivate: remove the subscriptions, finish the frame in hand, answer a waiting
  ``~/relocalize``; the model stays loaded.
- cleanup / shutdown: the same, then free the model and the publishers.

``autostart`` (default true, as nav2's own nodes) makes the worker run configure and activate
itself, so ``ros2 run`` and ``ros2 launch`` work without a lifecycle manager.
"""
from __future__ import annotations

import gc
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from geometry_msgs.msg import PoseArray, PoseWithCovarianceStamped
from rclpy.lifecycle import State, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, PointCloud2
from visualization_msgs.msg import MarkerArray

SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE


class LifecycleMixin:
    """The transition callbacks; the LifecycleNodeMixin next in the MRO manages the publishers."""

    # ----- transitions -----------------------------------------------------------------------
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        self._create_publishers()
        if not self._in_worker(self._load):
            self._destroy_publishers()
            return FAILURE
        self.state = "inactive" if not self.state.startswith("error") else self.state
        self.get_logger().info("configured: model and keyframes loaded")
        return super().on_configure(state)

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # enables the lifecycle publishers
        before = set(self.subscriptions)
        self._create_image_subscription()
        self._create_pose_input_subscriptions()
        self._create_estimate_subscription()
        self._active_subscriptions = [s for s in self.subscriptions if s not in before]
        self._activated_at = time.monotonic()
        self._active = True
        if not self.state.startswith("error"):
            self.state = self._ready_state()
        self._publish_keyframes()  # latched: late subscribers get the map as loaded
        self.get_logger().info(f"active ({self.values['mode']} mode)")
        return result

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._stop_work("the node was deactivated")
        if not self.state.startswith("error"):
            self.state = "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._unload()
        self.state = "unconfigured"
        return super().on_cleanup(state)

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._stop_work("the node is shutting down")
        self._unload()
        self.state = "finalized"
        return super().on_shutdown(state)

    def on_error(self, state: State) -> TransitionCallbackReturn:
        self._stop_work("the node hit an error")
        self._unload()
        self.state = "error: a transition raised; the node is unconfigured again"
        return super().on_error(state)

    # ----- helpers -----------------------------------------------------------------------------
    def _ready_state(self) -> str:
        if not self._active:
            return "inactive"
        keyframes = self.relocalizer.keyframes if self.relocalizer else []
        return "ready" if keyframes else "waiting for keyframes"

    def _lifecycle_label(self) -> str:
        return self._state_machine.current_state[1]

    def _autostart(self) -> None:
        """configure, then activate, from the worker thread (the executor may not spin yet)."""
        try:  # Humble's rclpy raises where newer ones return ERROR (e.g. a manager got there first)
            if self.trigger_configure() != SUCCESS:
                self.get_logger().error("autostart: configure failed; the node stays unconfigured "
                                        "(see /diagnostics, fix it and configure again)")
                return
            if self.trigger_activate() != SUCCESS:
                self.get_logger().error("autostart: activate failed")
        except Exception as exc:
            self.get_logger().error(f"autostart: {type(exc).__name__}: {exc} (set autostart false when a "
                                    "lifecycle manager drives the node)")

    def _create_publishers(self) -> None:
        if self._outputs:
            return
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        create = self.create_lifecycle_publisher
        self.pub_matches = create(PointCloud2, "~/matches", 10)
        self.pub_debug = create(Image, "~/debug_image", 1)
        self.pub_keyframes = create(PoseArray, "~/keyframes", latched)
        # Only the poses just added (outputs.py): volatile, a late subscriber gets ~/keyframes.
        self.pub_keyframes_added = create(PoseArray, "~/keyframes_added", QoSProfile(
            depth=100, durability=DurabilityPolicy.VOLATILE, reliability=ReliabilityPolicy.RELIABLE))
        self.pub_markers = create(MarkerArray, "~/markers", 10)
        self.pub_pose = create(PoseWithCovarianceStamped, "~/pose", 10)
        # Relative, so a namespaced AMCL (robot1/initialpose) hears it; remappable.
        self.pub_initialpose = create(PoseWithCovarianceStamped, "initialpose", 10)
        self._outputs = [self.pub_matches, self.pub_debug, self.pub_keyframes, self.pub_keyframes_added, self.pub_markers,
                         self.pub_pose, self.pub_initialpose]

    def _destroy_publishers(self) -> None:
        for publisher in self._outputs:
            self.destroy_lifecycle_publisher(publisher)
        self._outputs = []

    def _stop_work(self, why: str) -> None:
        """No new frames, a waiting ~/relocalize answered, the frame in hand finished."""
        self._active = False
        for subscription in self._active_subscriptions:
            self.destroy_subscription(subscription)
        self._active_subscriptions = []
        self._cancel_relocalize(why)
        with self._wake:
            if self._pending is not None:
                self._pending = None
                self.frames.drop()
        with self._busy:  # the worker holds it while it handles a frame
            pass

    def _unload(self) -> None:
        """Free the model (and its GPU memory) and the publishers; the keyframe store stays on disk."""
        self.relocalizer = None
        self._latest_rgb = None
        self._destroy_publishers()
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _in_worker(self, job: Callable[[], Any]) -> Any:
        """Run ``job`` in the worker thread and wait for its result (directly when already there)."""
        if threading.current_thread() is self._worker:
            return job()
        done = threading.Event()
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["result"] = job()
            except BaseException as exc:  # handed to the caller
                box["error"] = exc
            finally:
                done.set()

        with self._wake:
            self._jobs.append(run)
            self._wake.notify_all()
        while not done.wait(0.5):
            if not self._worker.is_alive():
                raise RuntimeError("the worker thread stopped")
        if "error" in box:
            raise box["error"]
        return box["result"]
