"""match_node's /diagnostics report and its throttled error log."""
from __future__ import annotations

import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Header

from roma_ros.ros.conversions import (
    FRAME_FAULTS,
)
from roma_ros.ros.health import Level

LOG_THROTTLE_S = 10.0
LOG_CAUSES = ("model", "keyframes", "processing", "camera_info", "keyframe_pose",
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
        counts = self.frames.counts()
        values = {
            "state": self.state,
            "model": self.values["model"],
            "device": getattr(self.relocalizer.matcher, "device", "") if self.relocalizer else self.values["device"],
            "keyframes": str(len(self.relocalizer.keyframes) if self.relocalizer else 0),
            "keyframes_dir": str(self.store.directory),
            **{key: str(count) for key, count in counts.items()},
            "lost_in_transport": str(self.transport_gaps.lost) if self.transport_gaps.seen else
            "unknown: no publication sequence numbers (ROS 2 Humble, or an RMW without them)",
            "accepted": str(self.accepted),
            "rate_hz": f"{rate:.2f}",
            "latency_mean_ms": f"{1000 * float(np.mean(lat)):.1f}" if lat else "",
            "latency_max_ms": f"{1000 * max(lat):.1f}" if lat else "",
            "dropped_frames": str(counts["replaced"]),  # deprecated alias of replaced
            "last_result": self.last_result,
            "last_error": self.last_error,
            **self.pose_status,
            "pose_frame": self.values["base_frame"] if self.values["camera_to_base"] else "camera optical frame",
            "query_intrinsics": self._intrinsics_source(),
            **self._feature_status(),
        }
        message = f"{self.state}; {health_text}" if health_text else self.state
        status = DiagnosticStatus(level=bytes([level]), name=f"{self.get_fully_qualified_name()}: relocalization",
                                  message=message, hardware_id=values["device"],
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        self.pub_diag.publish(DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()), status=[status]))

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
        """Remember the full message for diagnostics; log it at most once per cause (one of
        LOG_CAUSES) per 10 s, saying how many lines of that cause were held back."""
        self.last_error = message
        suppressed = self._throttle.allow(cause)
        if suppressed is not None:
            more = f" ({suppressed} more like it in the last {LOG_THROTTLE_S:.0f} s)" if suppressed else ""
            self.get_logger().error(message + more)

    def _not_ready(self) -> str:
        reason = self.last_error if self.state.startswith("error") and self.last_error else self.state
        return f"matcher not ready: {reason}"
