"""match_node's mapping mode: keyframes added automatically while ``mapping.enabled`` is on.

After each processed query frame the worker asks here whether the camera, at that frame's stamp
(the ``keyframe_pose`` nearest it within ``sync_tolerance``), has moved ``mapping.min_distance`` or
turned ``mapping.min_angle`` from every stored keyframe, or ``mapping.max_interval`` has passed
since the last addition: the same rule and code as ``roma-keyframes import-bag``
(mapping/keyframing.py). If so, the frame is stored exactly as ``~/add_keyframe`` would store it
(depth, intrinsics and pose nearest its stamp, one index update) and joins the live map at once.
Additions and the last decision are reported in /diagnostics. Without a pose nothing is added: a
keyframe that cannot be placed in the map would not help a pose later.
"""
from __future__ import annotations

import numpy as np
from std_msgs.msg import Header

from roma_ros.mapping.keyframing import KeyframeRule, KeyframeSelector
from roma_ros.mapping.sync import stamp_ns


def keyframe_rule(values: dict) -> KeyframeRule:
    """The rule from the ``mapping.*`` parameters; ValueError when they select every frame."""
    rule = KeyframeRule(float(values["mapping.min_distance"]), float(values["mapping.min_angle"]),
                        float(values["mapping.max_interval"]))
    try:
        rule.validate()
    except ValueError as exc:
        raise ValueError(f"mapping: {exc}") from None
    return rule


class MappingModeMixin:
    """The automatic keyframing; the worker calls ``_map_frame`` after each processed frame."""

    def _init_mapping(self) -> None:
        self.mapping_added = 0
        self.mapping_last = ""
        self._mapping_selector: KeyframeSelector | None = None
        self._mapping_key: tuple | None = None

    def _selector(self) -> KeyframeSelector:
        """Against the keyframes the relocalizer holds now: rebuilt when they or the rule change
        (a reload, a manual ~/add_keyframe, a live parameter change)."""
        rule = keyframe_rule(self.values)
        keyframes = self.relocalizer.keyframes
        key = (rule.min_distance, rule.min_angle_deg, rule.max_interval_s, len(keyframes),
               id(keyframes[-1]) if keyframes else None)
        if key != self._mapping_key:
            last = self._mapping_selector.last_stamp_ns if self._mapping_selector else None
            self._mapping_selector = KeyframeSelector(rule, [k.pose for k in keyframes if k.pose is not None])
            self._mapping_selector.last_stamp_ns = last
            self._mapping_key = key
        return self._mapping_selector

    def _map_frame(self, header: Header, rgb: np.ndarray) -> None:
        if not self.values["mapping.enabled"] or self.relocalizer is None:
            return
        tolerance = float(self.values["sync_tolerance"])
        found = self._keyframe_poses.nearest(header.stamp, tolerance)
        if found.item is None:
            self.mapping_last = f"no keyframe added: {found.why_missing('keyframe_pose', tolerance)}"
            return
        stamp = stamp_ns(header.stamp)
        try:
            selector = self._selector()
        except ValueError as exc:  # both thresholds 0 at start-up (a live change is refused)
            self._record_error("mapping", str(exc))
            return
        why = selector.decide(stamp, found.item)
        if why:
            self.mapping_last = f"no keyframe added: {why}"
            return
        inputs, stored, missing = self._keyframe_inputs(rgb, header)
        try:
            keyframe = self.store.add(rgb, self.relocalizer.keyframes, **inputs)
        except (OSError, ValueError) as exc:
            self._record_error("mapping", f"mapping: could not write a keyframe to {self.store.directory}: {exc}")
            return
        index = self.relocalizer.add_keyframe(keyframe)
        selector.add(stamp, found.item)
        self._mapping_key = None if self._mapping_key is None else (*self._mapping_key[:3], len(self.relocalizer.keyframes),
                                                                     id(self.relocalizer.keyframes[-1]))
        self.mapping_added += 1
        self.state = "ready"
        self._keyframes_added([keyframe])
        self.mapping_last = f"added '{keyframe.name}' (index {index})"
        message = f"mapping: added keyframe '{keyframe.name}' (index {index}); stored: {', '.join(stored)}"
        self.get_logger().info(message + (f"; missing: {'; '.join(missing)}" if missing else ""))

    def mapping_status(self) -> dict[str, str]:
        return {"mapping": "on" if self.values["mapping.enabled"] else "off",
                "mapping_keyframes_added": str(self.mapping_added), "mapping_last": self.mapping_last}
