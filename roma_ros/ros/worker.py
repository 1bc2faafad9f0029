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
from roma_ros.core.text import MESSAGE_LIMIT, printable
from roma_ros.ros.health import Outcome
from roma_ros.matching.registry import build_matcher
from roma_ros.localize.pipeline import Relocalizer
from roma_ros.store.cache import cache_for
from roma_ros.store.persisted import PersistedDescriptors


class WorkerMixin:
    """The one thread that does the heavy work, so the executor never blocks on it."""

    def _run_worker(self) -> None:
        """Lifecycle jobs (loading) and frames, one at a time; autostart runs the transitions here."""
        if self.values["autostart"]:
            self._autostart()
        while not self._stop.is_set():
            item = self._next_item()
            if item is None:
                continue
            if callable(item):  # a job from another thread (lifecycle.py's _in_worker)
                item()
                continue
            self._follow_store()  # another process's adds and removals (store.poll)
            with self._busy:
                try:
                    outcome = self._handle(item)
                except Exception as exc:  # the node must outlive any single bad frame
                    outcome = Outcome.FAILED
                    self._record_error("processing", f"processing a frame failed: {type(exc).__name__}: {exc}")
                self.frames.finish(outcome)

    def _next_item(self):
        """The next job, else the newest frame once max_rate_hz allows one (frames arriving
        meanwhile replace it, counted), else None after a short wait."""
        with self._wake:
            while not self._stop.is_set():
                if self._jobs:
                    return self._jobs.pop(0)
                if self._pending is not None:
                    wait = self._next_allowed - time.monotonic()
                    if wait <= 0:
                        msg, self._pending = self._pending, None
                        rate = float(self.values["max_rate_hz"])
                        self._next_allowed = time.monotonic() + (1.0 / rate if rate > 0 else 0.0)
                        return msg
                    self._wake.wait(timeout=min(wait, 0.5))
                else:
                    self._wake.wait(timeout=0.5)
            return None

    def _latest_image(self):
        """The newest frame as (RGB, header) for ~/add_keyframe: the last one matched, or the last
        one received when that is newer (on_demand mode matches few); (None, None) before any."""
        msg = self._last_image
        if msg is not None and (self._latest_header is None or msg.header != self._latest_header):
            rgb = self._convert(msg)
            if rgb is not None:
                return rgb, msg.header
        return self._latest_rgb, self._latest_header

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
                self._keyframes_added(change.added)
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
            self.get_logger().warning(printable(warning, MESSAGE_LIMIT))
        assert self.relocalizer is not None
        cache = cache_for(self.relocalizer.matcher, self.store.directory)
        self.relocalizer.set_keyframes(keyframes, cache, PersistedDescriptors(self.store))
        for warning in self.relocalizer.skipped:
            self.get_logger().warning(warning)
        keyframes = self.relocalizer.keyframes
        if cache is not None:
            for warning in cache.stats.warnings:
                self.get_logger().warning(printable(warning, MESSAGE_LIMIT))
            where = cache.folder or "nowhere (kept in memory only)"
            self.get_logger().info(f"keyframe features: {cache.stats.loaded} from {where}, "
                                   f"{cache.stats.computed} computed")
        self._publish_keyframes()
        self.state = self._ready_state()
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
        result = self.relocalizer.process(rgb, camera, eligible=self._prior())
        if result.pose is not None and camera is None:
            result.pose.reason = camera_problem
        latency = time.perf_counter() - start
        self._publish_result(msg.header, rgb, result, latency)
        self._map_frame(msg.header, rgb)  # mapping mode (mapping_mode.py): maybe store this frame
        self.latencies.append(latency)
        self.processed_times.append(time.monotonic())
        self.accepted += int(result.accepted)
        return Outcome.PROCESSED
