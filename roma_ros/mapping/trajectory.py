"""Timed poses and their interpolation, the TF tree of a recording, and TUM trajectory files.

Poses in a recording (a pose topic, or ``/tf``) rarely share the image stamps, so a pose at an
image stamp is interpolated between the two samples around it: position linearly, orientation
by slerp. Only when those two samples lie at most ``max_gap_s`` apart: over a longer gap (a
dropped TF stream, a SLAM restart) the motion in between is unknown, and a pose made up there
would put a keyframe in the wrong place. No extrapolation past the first or last sample.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np

from roma_ros.core.transforms import Pose, matrix_to_pose, pose_to_matrix

NS = 1_000_000_000


def slerp(q0: np.ndarray, q1: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Row-wise spherical interpolation of unit quaternions [x, y, z, w], ``u`` in [0, 1]."""
    dot = np.sum(q0 * q1, axis=1)
    q1 = np.where(dot[:, None] < 0, -q1, q1)  # the short way round
    dot = np.abs(dot)
    theta = np.arccos(np.clip(dot, -1.0, 1.0))
    small = theta < 1e-6
    sin = np.where(small, 1.0, np.sin(theta))
    w0 = np.where(small, 1.0 - u, np.sin((1.0 - u) * theta) / sin)
    w1 = np.where(small, u, np.sin(u * theta) / sin)
    q = w0[:, None] * q0 + w1[:, None] * q1
    return q / np.linalg.norm(q, axis=1, keepdims=True)


class Trajectory:
    """Poses of one frame over time (stamps in integer nanoseconds), sorted; a repeated stamp
    keeps its last sample."""

    def __init__(self, stamps_ns, positions, quaternions, what: str = "pose") -> None:
        stamps = np.asarray(stamps_ns, dtype=np.int64).reshape(-1)
        positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
        quats = np.asarray(quaternions, dtype=np.float64).reshape(-1, 4)
        order = np.argsort(stamps, kind="stable")
        stamps, positions, quats = stamps[order], positions[order], quats[order]
        last = np.append(stamps[1:] != stamps[:-1], True) if len(stamps) else np.zeros(0, bool)
        norms = np.linalg.norm(quats[last], axis=1, keepdims=True)
        self.stamps, self.positions = stamps[last], positions[last]
        self.quaternions = quats[last] / np.where(norms > 0, norms, 1.0)
        self.what = what

    def __len__(self) -> int:
        return len(self.stamps)

    def at(self, stamps_ns, max_gap_s: float) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(positions (N, 3), quaternions (N, 4), reasons): NaN rows where no pose can be
        given, with the reason ("" where there is a pose)."""
        t = np.asarray(stamps_ns, dtype=np.int64).reshape(-1)
        n = len(self.stamps)
        pos = np.full((len(t), 3), np.nan)
        quat = np.full((len(t), 4), np.nan)
        reasons = [f"no {self.what} at all"] * len(t) if n == 0 else [""] * len(t)
        if n == 0 or len(t) == 0:
            return pos, quat, reasons
        hi = np.clip(np.searchsorted(self.stamps, t, side="left"), 0, n - 1)
        exact = self.stamps[hi] == t
        lo = np.clip(hi - 1, 0, n - 1)
        inside = (t > self.stamps[0]) & (t < self.stamps[-1]) & ~exact
        gap_ns = self.stamps[hi] - self.stamps[lo]
        ok_gap = inside & (gap_ns <= max_gap_s * NS)
        u = np.where(ok_gap, (t - self.stamps[lo]) / np.maximum(gap_ns, 1), 0.0)
        pos[ok_gap] = ((1 - u[:, None]) * self.positions[lo] + u[:, None] * self.positions[hi])[ok_gap]
        quat[ok_gap] = slerp(self.quaternions[lo], self.quaternions[hi], u)[ok_gap]
        pos[exact], quat[exact] = self.positions[hi][exact], self.quaternions[hi][exact]
        for i in np.nonzero(~(exact | ok_gap))[0]:
            if t[i] < self.stamps[0] or t[i] > self.stamps[-1]:
                reasons[i] = (f"outside the {self.what} stream ({self.stamps[0] / NS:.3f} to "
                              f"{self.stamps[-1] / NS:.3f} s)")
            else:
                reasons[i] = f"{self.what} gap of {gap_ns[i] / NS:.3f} s > max gap {max_gap_s:g} s"
        return pos, quat, reasons

    def pose_at(self, stamp_ns: int, max_gap_s: float) -> tuple[Pose | None, str]:
        pos, quat, reasons = self.at([stamp_ns], max_gap_s)
        if reasons[0]:
            return None, reasons[0]
        return (tuple(pos[0]), tuple(quat[0])), ""  # type: ignore[return-value]


def _strip(frame: str) -> str:
    return str(frame).lstrip("/")  # ROS 1 style "/map" names the same frame as "map"


@dataclass
class TfTree:
    """The transforms of ``/tf`` (dynamic, timed) and ``/tf_static`` of one recording.

    Each edge is parent -> child, ``T_parent_child`` (the child frame's pose in the parent), as
    TransformStamped has it. A lookup walks the tree through the frames' common ancestor, so
    the two frames need not be parent and child.
    """

    static: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    samples: dict[tuple[str, str], list[tuple[int, tuple, tuple]]] = field(default_factory=dict)
    _dynamic: dict[tuple[str, str], Trajectory] = field(default_factory=dict)

    def add(self, parent: str, child: str, stamp_ns: int, position, quaternion, static: bool) -> None:
        parent, child = _strip(parent), _strip(child)
        if static:
            self.static[(parent, child)] = pose_to_matrix((tuple(position), tuple(quaternion)))
        else:
            self.samples.setdefault((parent, child), []).append((stamp_ns, tuple(position), tuple(quaternion)))
            self._dynamic.pop((parent, child), None)

    def frames(self) -> set[str]:
        edges = list(self.static) + list(self.samples)
        return {f for edge in edges for f in edge}

    def parents(self) -> dict[str, str]:
        return {child: parent for parent, child in list(self.samples) + list(self.static)}

    def _edge(self, parent: str, child: str) -> Trajectory:
        if (parent, child) not in self._dynamic:
            rows = self.samples[(parent, child)]
            self._dynamic[(parent, child)] = Trajectory([r[0] for r in rows], [r[1] for r in rows],
                                                        [r[2] for r in rows], f"tf {parent} -> {child}")
        return self._dynamic[(parent, child)]

    def _chain(self, frame: str) -> list[str]:
        parents, chain = self.parents(), [frame]
        while chain[-1] in parents and len(chain) <= len(parents):
            chain.append(parents[chain[-1]])
        return chain

    def check_frames(self, *frames: str) -> None:
        """ValueError naming the missing frame and listing the frames present, and one when
        the two frames are not connected."""
        known = self.frames()
        for frame in frames:
            if _strip(frame) not in known:
                listed = ", ".join(sorted(known)) or "none: the bag has no /tf or /tf_static messages"
                raise ValueError(f"frame '{frame}' is not in the bag's TF tree; frames present: {listed}")
        if len(frames) == 2:
            a, b = (_strip(f) for f in frames)
            if not set(self._chain(a)) & set(self._chain(b)):
                raise ValueError(f"frames '{a}' and '{b}' are not connected in the bag's TF tree (roots "
                                 f"'{self._chain(a)[-1]}' and '{self._chain(b)[-1]}')")

    def lookup(self, target: str, source: str, stamps_ns, max_gap_s: float) -> tuple[np.ndarray, list[str]]:
        """T_target_source (N, 4, 4) at each stamp (the ``source`` frame's pose in ``target``),
        NaN where an edge on the way has no sample within the gap rule, with the reason."""
        target, source = _strip(target), _strip(source)
        self.check_frames(target, source)
        stamps = np.asarray(stamps_ns, dtype=np.int64).reshape(-1)
        up_t, up_s = self._chain(target), self._chain(source)
        common = next(f for f in up_t if f in up_s)
        reasons = [""] * len(stamps)

        def down(chain: list[str]) -> np.ndarray:
            """T_common_frame for the frame at chain[0]."""
            T = np.tile(np.eye(4), (len(stamps), 1, 1))
            path = chain[: chain.index(common) + 1]
            for child, parent in zip(path[:-1], path[1:]):
                if (parent, child) in self.static and (parent, child) not in self.samples:
                    edge = np.broadcast_to(self.static[(parent, child)], T.shape)
                else:
                    pos, quat, why = self._edge(parent, child).at(stamps, max_gap_s)
                    edge = np.tile(np.eye(4), (len(stamps), 1, 1))
                    for i in range(len(stamps)):
                        if why[i]:
                            edge[i] = np.nan
                            reasons[i] = reasons[i] or why[i]
                        else:
                            edge[i] = pose_to_matrix((pos[i], quat[i]))
                T = edge @ T  # T_parent_frame = T_parent_child @ T_child_frame
            return T

        T_common_target, T_common_source = down(up_t), down(up_s)
        return np.linalg.inv(T_common_target) @ T_common_source, reasons


def poses_of(matrices: np.ndarray, reasons: list[str]) -> list[Pose | None]:
    return [None if why else matrix_to_pose(T) for T, why in zip(matrices, reasons)]


def read_tum(path: str | Path) -> Trajectory:
    """A TUM trajectory file (``stamp x y z qx qy qz qw`` per line, seconds, '#' comments)."""
    rows, stamps = [], []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.replace(",", " ").split()
        try:
            values = [float(v) for v in fields]
            stamp = int(Decimal(fields[0]) * NS)  # exact: a float holds 1.7e9 s only to ~0.2 us
        except (ValueError, IndexError, InvalidOperation):
            values = []
        if len(values) != 8 or not np.all(np.isfinite(values)):
            raise ValueError(f"{path}:{number}: a TUM line is 'stamp x y z qx qy qz qw' (8 numbers), got {line!r}")
        rows.append(values)
        stamps.append(stamp)
    if not rows:
        raise ValueError(f"TUM file '{path}' has no poses")
    data = np.array(rows)
    return Trajectory(stamps, data[:, 1:4], data[:, 4:8], "ground-truth pose")


def tum_lines(stamps_ns: list[int], poses: list[Pose]) -> str:
    """TUM text (what evo_ape and rtabmap read): seconds with nanosecond digits, then x y z qx qy qz qw."""
    return "".join(f"{s // NS}.{s % NS:09d} " + " ".join(f"{v:.9g}" for v in (*p[0], *p[1])) + "\n"
                   for s, p in zip(stamps_ns, poses))
