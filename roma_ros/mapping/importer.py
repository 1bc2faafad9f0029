"""A recording -> keyframes in a store: select by pose (keyframing.py), then write the chosen frames.

The selection runs on the scan alone (poses and stamps, no pixels), so it is complete and
deterministic before the first write: a bag whose topics, frames or depth do not fit fails
with nothing written. Keyframes are named ``bag_<stamp ns>``; an import that is interrupted
and run again selects the same frames, skips the names already stored and writes the rest,
so resuming never duplicates. Keyframes stored before (by hand, from another bag) count as
stored keyframes for the selection: a place already in the map is not added again.

Every write goes through ``KeyframeStore.add`` (atomic, confined to the folder), in one place
(``_store``).
"""
from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from roma_ros.mapping.bag import BagError, Frame, PoseSource, Scan, images, scan
from roma_ros.mapping.keyframing import KeyframeRule, KeyframeSelector
from roma_ros.store import Keyframe, KeyframeStore

PREFIX = "bag_"
Progress = Callable[[Iterable, int], Iterable]


def keyframe_name(frame: Frame) -> str:
    return f"{PREFIX}{frame.stamp_ns}"


@dataclass
class ImportPlan:
    selected: list[Frame]  # in recording order, including the ones already stored
    to_write: list[Frame]
    skipped: collections.Counter = field(default_factory=collections.Counter)  # reason -> frames


@dataclass
class ImportSummary:
    store: Path
    frames: int
    keyframes_written: int
    keyframes_selected: int
    keyframes_in_store: int
    skipped: dict[str, int]
    path_length_m: float  # of the camera, through its poses at the image stamps
    extent_m: tuple[float, float, float]  # bounding box of the selected keyframes
    timings: dict[str, float]  # seconds: scan, select, decode, write

    def lines(self) -> list[str]:
        ex = " x ".join(f"{v:.2f}" for v in self.extent_m)
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items(), key=lambda kv: -kv[1])) or "none"
        return [f"{self.keyframes_written} keyframes written ({self.keyframes_selected} selected from "
                f"{self.frames} frames; {self.keyframes_in_store} in {self.store})",
                f"coverage: {self.path_length_m:.2f} m of camera path, keyframes span {ex} m (x y z)",
                f"frames skipped: {skipped}"]


def plan(scan_: Scan, rule: KeyframeRule, existing: list[Keyframe], need_depth: bool) -> ImportPlan:
    """Which frames become keyframes, and why the others do not."""
    names = {k.name for k in existing if k.pose is not None}  # a pose-less one is a crash leftover
    ours = {keyframe_name(f) for f in scan_.frames}
    # Keyframes from elsewhere count as stored; ours are re-selected, so a resumed run selects the same.
    selector = KeyframeSelector(rule, [k.pose for k in existing if k.pose is not None and k.name not in ours])
    result = ImportPlan([], [])
    for frame in scan_.frames:
        why = ("duplicate stamp" if frame.duplicate else "no pose" if frame.pose is None else
               "no depth" if need_depth and frame.depth_stamp_ns is None else "")
        why = why or selector.decide(frame.stamp_ns, frame.pose)
        if why:
            result.skipped[why] += 1
            continue
        selector.add(frame.stamp_ns, frame.pose)
        result.selected.append(frame)
        if keyframe_name(frame) in names:
            result.skipped["already imported"] += 1
        else:
            result.to_write.append(frame)
    return result


def _store(store: KeyframeStore, existing: list[Keyframe], frame: Frame, rgb: np.ndarray,
           depth: np.ndarray | None) -> None:
    """The one place where the import writes: ``KeyframeStore.add`` (atomic, confined)."""
    name = keyframe_name(frame)
    leftover = [k for k in existing if k.name == name]
    if leftover:  # an image without its index entry: a crash between the two writes of an earlier add
        store.remove(name)
        existing.remove(leftover[0])
    keyframe = store.add(rgb, existing, name=keyframe_name(frame), pose=frame.pose, intrinsics=frame.intrinsics,
                         depth=depth)
    if keyframe.name != keyframe_name(frame):  # the store made the name unique: a file was in the way
        raise BagError(f"'{store.directory / (keyframe_name(frame) + '.png')}' exists without an index entry: "
                       "run `roma-keyframes check --repair`, then import again")
    # ``add`` needs only names and files of the earlier keyframes: keep no pixels per keyframe.
    existing.append(dataclasses.replace(keyframe, image=rgb[:0, :0], depth=None))


def import_bag(bag: str | Path, directory: str | Path, image_topic: str, poses: PoseSource,
               depth_topic: str | None = None, info_topic: str | None = None, rule: KeyframeRule | None = None,
               depth_tolerance_s: float = 0.02, progress: Progress = lambda it, total: it,
               warn: Callable[[str], None] = lambda line: None) -> ImportSummary:
    rule = rule or KeyframeRule()
    rule.validate()
    timings = {}
    start = time.perf_counter()
    scan_ = scan(bag, image_topic, poses, depth_topic, info_topic, depth_tolerance_s)
    timings["scan"] = time.perf_counter() - start
    store = KeyframeStore(directory)
    if store.directory.exists() and not store.directory.is_dir():
        raise BagError(f"keyframe folder '{store.directory}' is a file: name a folder")
    existing = store.load() if store.directory.is_dir() else []
    for line in store.warnings:
        warn(line)
    start = time.perf_counter()
    chosen = plan(scan_, rule, existing, need_depth=bool(depth_topic))
    timings["select"] = time.perf_counter() - start
    timings["decode"] = timings["write"] = 0.0
    existing = [dataclasses.replace(k, image=k.image[:0, :0], depth=None) for k in existing]
    stream = images(scan_, {f.stamp_ns for f in chosen.to_write})
    written = 0
    clock = time.perf_counter()
    for frame, rgb, depth in progress(stream, len(chosen.to_write)):
        now = time.perf_counter()
        timings["decode"] += now - clock
        _store(store, existing, frame, rgb, depth)
        written += 1
        clock = time.perf_counter()
        timings["write"] += clock - now
    if written != len(chosen.to_write):
        raise BagError(f"only {written} of {len(chosen.to_write)} selected frames were found again in '{bag}'")
    positions = np.array([f.pose[0] for f in chosen.selected]) if chosen.selected else np.zeros((0, 3))
    extent = tuple(float(v) for v in np.ptp(positions, axis=0)) if len(positions) else (0.0, 0.0, 0.0)
    path = np.array([f.pose[0] for f in sorted(scan_.frames, key=lambda f: f.stamp_ns) if f.pose is not None])
    steps = np.diff(path, axis=0)  # the camera's path at the image stamps, whatever the pose source
    return ImportSummary(store.directory, len(scan_.frames), written, len(chosen.selected), len(existing),
                         dict(chosen.skipped), float(np.linalg.norm(steps, axis=1).sum()), extent, timings)
