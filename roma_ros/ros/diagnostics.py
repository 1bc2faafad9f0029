"""match_node's /diagnostics report and its throttled error log."""
from __future__ import annotations

import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Header

from roma_ros.ros.conversions import (
    FRAME_FAULTS,
)
from roma_ros.core.text import MESSAGE_LIMIT, printable
from roma_ros.ros.health import Level

LOG_THROTTLE_S = 10.0
LOG_CAUSES = ("model", "keyframes", "processing", "camera_info", "keyframe_pose", "depth", "mapping", "estimate",
              "initialpose",
              *(f"bad_frame:{kind}" for kind in FRAME_FAULTS))


class DiagnosticsMixin:
    """The health report and the error log (at most one line per cause per LOG_THROTTLE_S)."""

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        recent = [t for t in self.processed_times if now - t < 10.0]
        rate = len(recent) / 10.0
        lat = list(self.latencies)
        level = Level.OK
        if self.state.startswith("error"):
            level = Level.ERROR
        elif self.state != "ready":
            level = Level.WARN
        health, health_text = self.frames.level()
        level = max(level, health)  # DiagnosticStatus's numbers
        input_rate = self.frames.input_rate()
        stale = self._stale_seconds(now)
        if stale is not None:
            level = max(level, Level.WARN)
            stale_text = f"no image for {stale:.1f} s (input {input_rate:.2f} Hz)"
            health_text = f"{stale_text}; {health_text}" if health_text else stale_text
        if self.initialpose_status.startswith("refused"):
            level = max(level, Level.WARN)
            health_text = "initialpose refused: no camera_to_base" + (f"; {health_text}" if health_text else "")
        counts = self.frames.counts()
        values = {
            "state": self.state,
            "lifecycle": self._lifecycle_label(),
            "mode": self.values["mode"] + (" (relocalizing)" if self._request is not None else ""),
            "model": self.values["model"],
            "device": getattr(self.relocalizer.matcher, "device", "") if self.relocalizer else self.values["device"],
            "keyframes": str(len(self.relocalizer.keyframes) if self.relocalizer else 0),
            "keyframes_dir": str(self.store.directory),
            **{key: str(count) for key, count in counts.items()},
            "lost_in_transport": str(self.transport_gaps.lost) if self.transport_gaps.seen else
            "unknown: no publication sequence numbers (ROS 2 Humble, or an RMW without them)",
            "accepted": str(self.accepted),
            "rate_hz": f"{rate:.2f}",
            "input_rate_hz": f"{input_rate:.2f}",
            "seconds_since_image": f"{since:.1f}" if (since := self.frames.since_last_frame(now)) is not None else "",
            "latency_mean_ms": f"{1000 * float(np.mean(lat)):.1f}" if lat else "",
            "latency_max_ms": f"{1000 * max(lat):.1f}" if lat else "",
            "dropped_frames": str(counts["replaced"]),  # deprecated alias of replaced
            "last_result": self.last_result,
            "last_error": self.last_error,
            **self.pose_status,
            "pose_frame": self.values["base_frame"] if self.values["camera_to_base"] else "camera optical frame",
            "query_intrinsics": self._intrinsics_source(),
            **self.mapping_status(),
            "estimate": self._estimate()[1] if self._estimate() is not None else "none",
            "prior": self.prior_status,
            "initialpose": self.initialpose_status,
            "initialpose_topic": self._initialpose_topic(),
            **self._feature_status(),
        }
        message = f"{self.state}; {health_text}" if health_text else self.state
        status = DiagnosticStatus(level=bytes([level]), name=f"{self.get_fully_qualified_name()}: relocalization",
                                  message=message, hardware_id=values["device"],
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        self.pub_diag.publish(DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()), status=[status]))

    def _stale_seconds(self, now: float) -> float | None:
        """Seconds without an image while active, when over stale_timeout; else None."""
        timeout = float(self.values["stale_timeout"])
        if not self._active or timeout <= 0:
            return None
        since = self.frames.since_last_frame(now)
        quiet = min(since, now - self._activated_at) if since is not None else now - self._activated_at
        return quiet if quiet > timeout else None

    def _feature_status(self) -> dict[str, str]:
        """The dense-feature LRU (feature_memory_mb): hits, misses, evictions, held MB."""
        if self.relocalizer is None:
            return {}
        lru = self.relocalizer.features
        return {"feature_hits": str(lru.stats.hits), "feature_misses": str(lru.stats.misses),
                "feature_evictions": str(lru.stats.evictions), "feature_held": str(len(lru)),
                "feature_memory_mb": f"{lru.bytes / 2**20:.1f}"}

    def _intrinsics_source(self) -> str:
        if self._camera_info is not None:
            return f"camera_info ({self._camera_info[2]})" if self._camera_info[2] else "camera_info"
        return "query_intrinsics parameter" if self.values["query_intrinsics"] else "none"

    def _record_error(self, cause: str, message: str) -> None:
        """Remember the message for diagnostics; log it at most once per cause (one of
        LOG_CAUSES) per 10 s, saying how many lines of that cause were held back. It may carry
        publisher-controlled text, so it is escaped and cut to MESSAGE_LIMIT (core/text.py)."""
        message = printable(message, MESSAGE_LIMIT)
        self.last_error = message
        suppressed = self._throttle.allow(cause)
        if suppressed is not None:
            more = f" ({suppressed} more like it in the last {LOG_THROTTLE_S:.0f} s)" if suppressed else ""
            self.get_logger().error(message + more)

    def _not_ready(self) -> str:
        reason = self.last_error if self.state.startswith("error") and self.last_error else self.state
        return f"matcher not ready: {reason}"
