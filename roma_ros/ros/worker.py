"""match_node's worker thread: loads the model and keyframes, then converts, relocalizes and
publishes the newest frame, one at a time. Every frame ends in exactly one counter (health.py)."""
from __future__ import annotations

import time

import numpy as np
from sensor_msgs.msg import CompressedImage, Image

from roma_ros.ros import params as P
from roma_ros.ros.conversions import (
    MIN_IMAGE_SIDE, ImageConversionError, compressed_msg_to_rgb, image_msg_to_rgb,
)
from roma_ros.ros.health import Outcome
from roma_ros.matching.registry import build_matcher
from roma_ros.localize.pipeline import Relocalizer
from roma_ros.store.cache import cache_for


class WorkerMixin:
    """The one thread that does the heavy work, so the executor never blocks on it."""

    def _run_worker(self) -> None:
        if not self._load():
            return
        while not self._stop.is_set():
            msg = self._next_frame()
            if msg is None:
                continue
            self._follow_store()
            try:
                outcome = self._handle(msg)
            except Exception as exc:  # the node must outlive any single bad frame
                outcome = Outcome.FAILED
                self._record_error("processing", f"processing a frame failed: {type(exc).__name__}: {exc}")
            self.frames.finish(outcome)

    def _load(self) -> bool:
        self.state = "loading model"
        try:
            config = P.matcher_config(self.values)
            self.get_logger().info(f"loading {config.model} on {config.device} ...")
            matcher = self._injected_matcher or build_matcher(config)
            self.relocalizer = Relocalizer(matcher, P.decision_config(self.values), P.pose_config(self.values),
                                           feature_memory_mb=float(self.values["feature_memory_mb"]))
            if self.values["warmup"] and config.model != "classical":
                dummy = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
                matcher.match(dummy, dummy)
        except Exception as exc:  # anything (a wrong checkpoint's RuntimeError too) must reach diagnostics
            self.state = "error: model not loaded"
            files = ", ".join(f"{k} '{self.values[k]}'" for k in ("weights", "dinov2_weights"))
            self._record_error("model", f"cannot load the matcher {self.values['model']} ({files}): "
                                        f"{type(exc).__name__}: {exc}")
            return False
        self.get_logger().info(f"matcher {matcher.name} ready on {matcher.device}")
        self._try_reload()
        return True

    def _follow_store(self) -> None:
        """Between queries: take up keyframes another process committed (one PRAGMA when none);
        a removal or an edit there means a full reload."""
        if self.relocalizer is None:
            return
        try:
            change = self.store.poll()
            if change is None:
                return
            if change.reload:
                self._try_reload()
                return
            for keyframe in change.added:
                self.relocalizer.add_keyframe(keyframe)
            if change.added:
                self._publish_keyframes()
                self.state = "ready"
                self.get_logger().info(f"{len(change.added)} keyframes added by another process")
        except Exception as exc:  # a store problem must not cost the query
            self._record_error("keyframes", f"following the keyframe store failed: {type(exc).__name__}: {exc}")

    def _try_reload(self) -> int | None:
        """``_reload``, with any failure reported in diagnostics instead of killing the thread."""
        try:
            return self._reload()
        except Exception as exc:
            self.state = "error: keyframes not loaded"
            self._record_error("keyframes", f"cannot load the keyframes from {self.store.directory}: "
                                            f"{type(exc).__name__}: {exc}")
            return None

    def _reload(self) -> int:
        self.state = "loading keyframes"
        keyframes = self.store.load()
        for warning in self.store.warnings:
            self.get_logger().warning(warning)
        assert self.relocalizer is not None
        cache = cache_for(self.relocalizer.matcher, self.store.directory)
        self.relocalizer.set_keyframes(keyframes, cache)
        for warning in self.relocalizer.skipped:
            self.get_logger().warning(warning)
        keyframes = self.relocalizer.keyframes
        if cache is not None:
            for warning in cache.stats.warnings:
                self.get_logger().warning(warning)
            where = cache.folder or "nowhere (kept in memory only)"
            self.get_logger().info(f"keyframe features: {cache.stats.loaded} from {where}, "
                                   f"{cache.stats.computed} computed")
        self._publish_keyframes()
        self.state = "ready" if keyframes else "waiting for keyframes"
        self.get_logger().info(f"{len(keyframes)} keyframes from {self.store.directory}")
        return len(keyframes)

    def _convert(self, msg: Image | CompressedImage) -> np.ndarray | None:
        limits = {"max_pixels": int(self.values["max_image_pixels"]), "min_side": MIN_IMAGE_SIDE}
        try:
            if isinstance(msg, CompressedImage):
                return compressed_msg_to_rgb(msg, **limits)
            return image_msg_to_rgb(msg, **limits)
        except ImageConversionError as exc:
            self._record_error(f"bad_frame:{exc.kind}", f"skipped a frame: {exc}")
            return None

    def _handle(self, msg: Image | CompressedImage) -> Outcome:
        start = time.perf_counter()
        rgb = self._convert(msg)
        if rgb is None:
            return Outcome.BAD
        assert self.relocalizer is not None  # the worker handles frames only once loaded
        self._latest_header, self._latest_rgb = msg.header, rgb
        camera, camera_problem = self._query_camera(rgb)
        result = self.relocalizer.process(rgb, camera)
        if result.pose is not None and camera is None:
            result.pose.reason = camera_problem
        latency = time.perf_counter() - start
        self._publish_result(msg.header, rgb, result, latency)
        self.latencies.append(latency)
        self.processed_times.append(time.monotonic())
        self.accepted += int(result.accepted)
        return Outcome.PROCESSED
