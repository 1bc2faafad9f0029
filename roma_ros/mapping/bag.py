"""Reading a rosbag2 recording (sqlite3 or MCAP) without ROS: ``rosbags`` deserializes it.

Two passes, so memory does not grow with the recording:

1. ``scan`` reads every message once but keeps no pixels: image and depth stamps, camera_info,
   and the poses (a PoseStamped / PoseWithCovarianceStamped / Odometry topic, or ``/tf`` +
   ``/tf_static`` between two named frames). Each image gets its pose, interpolated at its
   stamp (trajectory.py), and its depth frame, the nearest by stamp within a tolerance. Every
   user mistake (a missing topic, an unknown frame, depth never paired, a truncated bag) is
   found here, before anything is written.
2. ``images`` reads the image (and depth) messages again and decodes only the frames asked for.

Stamps are the message header stamps (what sensors set), not the recording time. Poses are those
of the camera's optical frame (x right, y down, z forward) in the pose source's parent frame.
"""
from __future__ import annotations

import collections
import sqlite3
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from roma_ros.core.imagemsg import ImageConversionError, compressed_msg_to_rgb, depth_msg_to_array, image_msg_to_rgb
from roma_ros.core.transforms import Pose, matrix_to_pose, pose_to_matrix
from roma_ros.mapping.sync import stamp_ns
from roma_ros.mapping.trajectory import NS, TfTree, Trajectory

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
POSE_TYPES = ("geometry_msgs/msg/PoseStamped", "geometry_msgs/msg/PoseWithCovarianceStamped", "nav_msgs/msg/Odometry")
TF = "tf2_msgs/msg/TFMessage"
TF_TOPICS = ("/tf", "/tf_static")
# A camera z axis this close to the map's up is a REP 103 body frame (z up), not an optical frame.
UP_COS = np.cos(np.radians(30.0))


class BagError(ValueError):
    """A recording that cannot be used as asked: one line naming the problem and the fix."""


@dataclass
class PoseSource:
    """Where the camera poses come from: ``topic``, or TF from ``tf_from`` (the map) to ``tf_to``.

    With a pose topic the pose is that of the topic's frame (Odometry's child_frame_id, else the
    camera itself); ``camera_frame`` names the camera's optical frame when it differs, and the
    rest of the way is looked up in TF. ``max_gap_s``: poses are interpolated only between two
    samples at most this far apart. ``check_optical``: refuse a camera frame whose z axis points
    up (a body frame) instead of silently storing a rotated map.
    """

    topic: str | None = None
    tf_from: str | None = None
    tf_to: str | None = None
    camera_frame: str | None = None
    max_gap_s: float = 0.2
    check_optical: bool = True

    def validate(self) -> None:
        if bool(self.topic) == bool(self.tf_from or self.tf_to):
            raise BagError("give the poses either as a topic (--pose-topic) or as two TF frames "
                           "(--tf-from MAP --tf-to CAMERA_OPTICAL_FRAME), not both or neither")
        if not self.topic and not (self.tf_from and self.tf_to):
            raise BagError("TF poses need both --tf-from (the map frame) and --tf-to (the camera optical frame)")
        if not self.max_gap_s > 0:
            raise BagError(f"max pose gap {self.max_gap_s} s must be > 0")


@dataclass
class Frame:
    """One image of the recording, as the scan found it."""

    stamp_ns: int
    pose: Pose | None = None
    pose_reason: str = ""  # why there is no pose
    depth_stamp_ns: int | None = None
    depth_reason: str = ""  # why there is no depth (only when a depth topic is read)
    intrinsics: dict[str, Any] | None = None
    duplicate: bool = False  # a second image with the same stamp


@dataclass
class Scan:
    path: Path
    frames: list[Frame]
    image_topic: str
    depth_topic: str | None
    trajectory: Trajectory  # all poses of the source, for path length and plots
    pose_frame: str = ""  # the parent frame of the poses (e.g. map)
    topics: dict[str, str] = field(default_factory=dict)


def _msgtype(reader: Any, topic: str) -> str:
    return reader.topics[topic].msgtype


def _require(reader: Any, path: Path, topic: str, types: tuple[str, ...], what: str) -> None:
    if topic not in reader.topics:
        listed = ", ".join(f"{t} ({info.msgtype})" for t, info in sorted(reader.topics.items())) or "none"
        raise BagError(f"bag '{path}' has no {what} topic '{topic}'; its topics: {listed}")
    if _msgtype(reader, topic) not in types:
        raise BagError(f"{what} topic '{topic}' in bag '{path}' is {_msgtype(reader, topic)}; expected "
                       f"{' or '.join(types)}")


def open_reader(path: str | Path) -> Any:
    """An opened rosbags AnyReader for a rosbag2 folder (or its .db3 / .mcap file)."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    path = Path(path).expanduser()
    if path.is_file() and path.suffix in (".db3", ".mcap"):
        path = path.parent
    if not path.exists():
        raise BagError(f"bag '{path}' does not exist")
    if not (path / "metadata.yaml").is_file():
        raise BagError(f"'{path}' is not a rosbag2 folder (no metadata.yaml); `ros2 bag reindex` rebuilds a "
                       "missing one")
    reader = AnyReader([path], default_typestore=get_typestore(Stores.LATEST))
    try:
        reader.open()
    except Exception as exc:  # rosbags' reader errors, sqlite3, a broken metadata.yaml
        raise BagError(f"bag '{path}' is truncated or corrupt: it cannot be opened ({type(exc).__name__}: {exc}); "
                       "re-record it, or try `ros2 bag reindex` on a sqlite3 bag") from None
    return reader


def read_messages(reader: Any, path: Path, topics: list[str]) -> Iterator[tuple[str, Any, int]]:
    """(topic, message, log time) of ``topics``; a truncated or corrupt bag is one BagError."""
    connections = [c for c in reader.connections if c.topic in topics]
    count = 0
    try:
        for connection, timestamp, raw in reader.messages(connections=connections):
            message = reader.deserialize(raw, connection.msgtype)
            count += 1
            yield connection.topic, message, timestamp
    except (sqlite3.Error, struct.error, EOFError, OSError, KeyError, IndexError, ValueError) as exc:
        raise BagError(f"bag '{path}' is truncated or corrupt after {count} messages ({type(exc).__name__}: "
                       f"{exc}); re-record it, or repair it with `ros2 bag reindex`") from None
    except Exception as exc:  # rosbags' own ReaderError / AnyReaderError / SerdeError
        if type(exc).__module__.startswith("rosbags"):
            raise BagError(f"bag '{path}' is truncated or corrupt after {count} messages "
                           f"({type(exc).__name__}: {exc}); re-record it") from None
        raise


def _pose_of(message: Any) -> tuple[tuple, tuple]:
    pose = message.pose.pose if hasattr(message.pose, "pose") else message.pose
    p, q = pose.position, pose.orientation
    return (p.x, p.y, p.z), (q.x, q.y, q.z, q.w)


def camera_info_intrinsics(message: Any) -> dict[str, Any]:
    """CameraInfo -> ``{fx, fy, cx, cy[, distortion]}`` (ROS convention, as keyframes.yaml)."""
    k = [float(v) for v in message.k]
    intrinsics: dict[str, Any] = {"fx": k[0], "fy": k[4], "cx": k[2], "cy": k[5]}
    if not (k[0] > 0 and k[4] > 0):
        raise BagError(f"camera_info K has fx={k[0]}, fy={k[4]}: the camera is not calibrated")
    d = [float(v) for v in message.d]
    if any(v != 0.0 for v in d):
        if message.distortion_model not in ("plumb_bob", "rational_polynomial"):
            raise BagError(f"camera_info distortion model '{message.distortion_model}' is not supported: record "
                           "plumb_bob or rational_polynomial, or rectified images with their camera_info")
        intrinsics["distortion"] = d
    return intrinsics


def nearest(sorted_stamps: np.ndarray, stamps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest of ``sorted_stamps`` for each stamp (ties: the later), and |offset| ns."""
    hi = np.clip(np.searchsorted(sorted_stamps, stamps), 0, len(sorted_stamps) - 1)
    lo = np.clip(hi - 1, 0, len(sorted_stamps) - 1)
    pick = np.where(np.abs(sorted_stamps[hi] - stamps) <= np.abs(sorted_stamps[lo] - stamps), hi, lo)
    return pick, np.abs(sorted_stamps[pick] - stamps)


def scan(path: str | Path, image_topic: str, poses: PoseSource, depth_topic: str | None = None,
         info_topic: str | None = None, depth_tolerance_s: float = 0.02) -> Scan:
    """Pass 1: every image's stamp, pose, depth pairing and intrinsics; see the module doc."""
    poses.validate()
    reader = open_reader(path)
    path = Path(reader.paths[0])
    try:
        _require(reader, path, image_topic, (IMAGE, COMPRESSED), "image")
        if depth_topic:
            _require(reader, path, depth_topic, (IMAGE,), "depth")
        if info_topic:
            _require(reader, path, info_topic, (CAMERA_INFO,), "camera_info")
        if poses.topic:
            _require(reader, path, poses.topic, POSE_TYPES, "pose")
        tf_topics = [t for t in TF_TOPICS if t in reader.topics and _msgtype(reader, t) == TF]
        topics = [image_topic, *filter(None, (depth_topic, info_topic, poses.topic)), *tf_topics]
        types = {t: _msgtype(reader, t) for t in topics}
        image_stamps, depth_stamps, infos = [], [], []
        pose_rows: list[tuple[int, tuple, tuple]] = []
        pose_frames: set[tuple[str, str]] = set()  # (parent, child: Odometry's child_frame_id or "")
        tree = TfTree()
        for topic, msg, _ in read_messages(reader, path, topics):
            if topic == image_topic:
                image_stamps.append(stamp_ns(msg.header.stamp))
            elif topic == depth_topic:
                depth_stamps.append(stamp_ns(msg.header.stamp))
            elif topic == info_topic:
                infos.append((stamp_ns(msg.header.stamp), msg))
            elif topic == poses.topic:
                pose_rows.append((stamp_ns(msg.header.stamp), *_pose_of(msg)))
                pose_frames.add((msg.header.frame_id.lstrip("/"), getattr(msg, "child_frame_id", "").lstrip("/")))
            if topic in tf_topics:
                for t in msg.transforms:
                    tr, ro = t.transform.translation, t.transform.rotation
                    tree.add(t.header.frame_id, t.child_frame_id, stamp_ns(t.header.stamp), (tr.x, tr.y, tr.z),
                             (ro.x, ro.y, ro.z, ro.w), static=topic == "/tf_static")
    finally:
        reader.close()
    if not image_stamps:
        raise BagError(f"image topic '{image_topic}' in bag '{path}' has no messages")
    frames = [Frame(s) for s in image_stamps]
    seen: set[int] = set()
    for frame in frames:
        frame.duplicate = frame.stamp_ns in seen
        seen.add(frame.stamp_ns)
    stamps = np.array(image_stamps, dtype=np.int64)
    trajectory, parent = _camera_poses(frames, stamps, poses, pose_rows, pose_frames, tree, path)
    _pair_depth(frames, stamps, depth_stamps, depth_topic, depth_tolerance_s, path, image_topic)
    if info_topic:
        if not infos:
            raise BagError(f"camera_info topic '{info_topic}' in bag '{path}' has no messages")
        info_stamps = np.array([s for s, _ in infos], dtype=np.int64)
        order = np.argsort(info_stamps, kind="stable")
        pick, _ = nearest(info_stamps[order], stamps)
        cache: dict[int, dict] = {}
        for frame, i in zip(frames, order[pick]):
            if int(i) not in cache:
                cache[int(i)] = camera_info_intrinsics(infos[int(i)][1])
            frame.intrinsics = cache[int(i)]
    return Scan(path, frames, image_topic, depth_topic, trajectory, parent, types)


def _camera_poses(frames: list[Frame], stamps: np.ndarray, poses: PoseSource, pose_rows: list, pose_frames: set,
                  tree: TfTree, path: Path) -> tuple[Trajectory, str]:
    """Each frame's optical-frame pose; returns the source trajectory and its parent frame."""
    if poses.topic:
        if not pose_rows:
            raise BagError(f"pose topic '{poses.topic}' in bag '{path}' has no messages")
        if len(pose_frames) > 1:
            listed = ", ".join(" -> ".join(filter(None, pair)) for pair in sorted(pose_frames))
            raise BagError(f"pose topic '{poses.topic}' changes frames ({listed}); "
                           "record one frame per topic")
        parent, body = next(iter(pose_frames))
        source = Trajectory([r[0] for r in pose_rows], [r[1] for r in pose_rows], [r[2] for r in pose_rows],
                            f"pose on '{poses.topic}'")
        pos, quat, reasons = source.at(stamps, poses.max_gap_s)
        T = np.full((len(stamps), 4, 4), np.nan)
        for i, why in enumerate(reasons):
            if not why:
                T[i] = pose_to_matrix((pos[i], quat[i]))
        camera = poses.camera_frame
        if camera and camera.lstrip("/") != body:
            if not body:
                raise BagError(f"pose topic '{poses.topic}' is a {POSE_TYPES[0].split('/')[-1]}-like message "
                               "without a child frame: it must be the camera optical frame itself; drop "
                               "--camera-frame, or use --tf-from/--tf-to")
            try:
                mount, why_mount = tree.lookup(body, camera, stamps, poses.max_gap_s)
            except ValueError as exc:
                raise BagError(str(exc)) from None
            T = T @ mount
            reasons = [a or b for a, b in zip(reasons, why_mount)]
        name = camera or body or poses.topic
    else:
        try:
            T, reasons = tree.lookup(poses.tf_from, poses.tf_to, stamps, poses.max_gap_s)
        except ValueError as exc:
            raise BagError(str(exc)) from None
        parent, name = poses.tf_from.lstrip("/"), poses.tf_to
        source = Trajectory(stamps[[not r for r in reasons]], T[[not r for r in reasons], :3, 3],
                            [matrix_to_pose(m)[1] for m, r in zip(T, reasons) if not r], f"tf {parent} -> {name}")
    for frame, matrix, why in zip(frames, T, reasons):
        frame.pose, frame.pose_reason = (None, why) if why else (matrix_to_pose(matrix), "")
    posed = [f for f in frames if f.pose is not None]
    if not posed:
        raise BagError(f"no image of '{path}' has a pose: {frames[0].pose_reason} (first image); check the pose "
                       f"source, or raise --max-pose-gap (now {poses.max_gap_s:g} s)")
    if poses.check_optical:
        z_up = np.mean([pose_to_matrix(f.pose)[2, 2] > UP_COS for f in posed])
        if z_up > 0.5:
            raise BagError(f"camera frame '{name}' has its z axis pointing up in {z_up:.0%} of the frames: that is "
                           "a body frame (REP 103: x forward, z up), not the camera's optical frame (z forward, "
                           "y down); name the optical frame (e.g. 'camera_color_optical_frame'), or pass "
                           "--no-optical-check for a camera that looks up or a map that is not z-up")
    return source, parent


def _pair_depth(frames: list[Frame], stamps: np.ndarray, depth_stamps: list[int], depth_topic: str | None,
                tolerance_s: float, path: Path, image_topic: str) -> None:
    if not depth_topic:
        return
    if not depth_stamps:
        raise BagError(f"depth topic '{depth_topic}' in bag '{path}' has no messages")
    sorted_depth = np.sort(np.array(depth_stamps, dtype=np.int64))
    pick, offset = nearest(sorted_depth, stamps)
    for frame, i, off in zip(frames, pick, offset):
        if off <= tolerance_s * NS:
            frame.depth_stamp_ns = int(sorted_depth[i])
        else:
            frame.depth_reason = f"no depth within {tolerance_s:g} s (nearest {off / NS:.3f} s away)"
    if all(f.depth_stamp_ns is None for f in frames):
        raise BagError(f"no image on '{image_topic}' was paired with "
                       f"a depth frame on '{depth_topic}' within {tolerance_s:g} s (nearest offset "
                       f"{offset.min() / NS:.3f} s): check that depth is registered to this camera, or raise "
                       "--depth-tolerance")


def decode_image(message: Any) -> np.ndarray:
    try:
        return compressed_msg_to_rgb(message) if hasattr(message, "format") else image_msg_to_rgb(message)
    except ImageConversionError as exc:
        raise BagError(f"image at {stamp_ns(message.header.stamp) / NS:.3f} s: {exc}") from None


def images(scan_: Scan, wanted: set[int] | None = None) -> Iterator[tuple[Frame, np.ndarray, np.ndarray | None]]:
    """Pass 2: (frame, RGB, depth as stored: uint16 mm or float32 m) for each wanted frame stamp
    (all when None), in recording order; depth only when the frame was paired with one."""
    by_stamp = {f.stamp_ns: f for f in scan_.frames if not f.duplicate}
    wanted = set(by_stamp) if wanted is None else wanted & set(by_stamp)
    uses = collections.Counter(by_stamp[s].depth_stamp_ns for s in wanted if by_stamp[s].depth_stamp_ns is not None)
    depth: dict[int, np.ndarray] = {}
    pending: dict[int, np.ndarray] = {}
    done: set[int] = set()
    topics = [scan_.image_topic] + ([scan_.depth_topic] if scan_.depth_topic else [])
    reader = open_reader(scan_.path)
    try:
        for topic, msg, _ in read_messages(reader, scan_.path, topics):
            stamp = stamp_ns(msg.header.stamp)
            if topic == scan_.depth_topic and uses[stamp] > 0 and stamp not in depth:
                try:
                    depth[stamp] = depth_msg_to_array(msg)
                except ImageConversionError as exc:
                    raise BagError(f"depth image at {stamp / NS:.3f} s on '{topic}': {exc}") from None
            elif topic == scan_.image_topic and stamp in wanted and stamp not in done and stamp not in pending:
                pending[stamp] = decode_image(msg)
            for s in [s for s in pending if by_stamp[s].depth_stamp_ns is None or by_stamp[s].depth_stamp_ns in depth]:
                frame = by_stamp[s]
                done.add(s)
                yield frame, pending.pop(s), None if frame.depth_stamp_ns is None else depth[frame.depth_stamp_ns]
                if frame.depth_stamp_ns is not None:  # one depth frame may pair with several images
                    uses[frame.depth_stamp_ns] -= 1
                    if uses[frame.depth_stamp_ns] == 0:
                        depth.pop(frame.depth_stamp_ns, None)
    finally:
        reader.close()
