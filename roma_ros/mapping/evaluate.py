"""Replaying a recording through the Relocalizer and measuring it against ground truth.

The queries (a bag's image topic, or a folder of images named by their stamp with a TUM
ground-truth file) go through the same ``Relocalizer`` and the same map-frame composition
(``localize.pose.map_pose``) as the node, in-process, at full speed. Per query it records what
the node would have published and how far that is from the truth; ``summarize`` turns the
records into the figures a user compares runs by:

- success rate: queries with a published pose that is not a wrong place, over the queries that
  have ground truth (as every rate here);
- wrong-place rate: queries with a published pose more than 1 m or 10 deg off (the dangerous
  failure: a localizer told to jump somewhere else);
- recall at (5 cm, 5 deg) and (25 cm, 5 deg): published poses within both bounds;
- median position / rotation error of the published poses, latency percentiles (wall clock of
  ``Relocalizer.process`` plus the map composition), and the mean NEES where the pose has a
  covariance (a consistent covariance gives about 6, the pose's degrees of freedom).
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from roma_ros.core.camera import CameraModel
from roma_ros.core.imageio import load_rgb, save_bytes
from roma_ros.core.transforms import Pose, pose_errors, pose_to_matrix
from roma_ros.localize.pipeline import Relocalizer
from roma_ros.localize.pose import map_pose
from roma_ros.mapping.bag import BagError, PoseSource, images, scan
from roma_ros.mapping.trajectory import NS, read_tum, tum_lines

WRONG_PLACE = (1.0, 10.0)  # metres, degrees
RECALLS = ((0.05, 5.0), (0.25, 5.0))
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class Query:
    stamp_ns: int
    rgb: np.ndarray
    camera: CameraModel | None
    truth: Pose | None
    truth_reason: str = ""  # why there is no ground truth


@dataclass
class QueryRecord:
    stamp_ns: int
    accepted: bool
    keyframe: str  # the accepted keyframe's name ("" when rejected)
    inliers: int
    pose: Pose | None  # what the node would publish on ~/pose (the camera in the map)
    covariance: np.ndarray | None
    truth: Pose | None
    position_error_m: float | None
    rotation_error_deg: float | None
    nees: float | None
    latency_s: float
    reason: str  # why no pose ("" when there is one)
    timings: dict[str, float] = field(default_factory=dict)  # the Relocalizer's stages, seconds

    @property
    def wrong_place(self) -> bool:
        return self.position_error_m is not None and (self.position_error_m > WRONG_PLACE[0] or
                                                      self.rotation_error_deg > WRONG_PLACE[1])


def bag_queries(bag: str | Path, image_topic: str, poses: PoseSource, info_topic: str | None = None,
                ) -> tuple[int, Iterator[Query]]:
    """(count, queries) of a recording; ground truth from its pose source (interpolated)."""
    found = scan(bag, image_topic, poses, info_topic=info_topic)

    def generate() -> Iterator[Query]:
        for frame, rgb, _ in images(found):
            camera = CameraModel.from_intrinsics(frame.intrinsics) if frame.intrinsics else None
            yield Query(frame.stamp_ns, rgb, camera, frame.pose, frame.pose_reason)

    return sum(not f.duplicate for f in found.frames), generate()


def stamp_of(path: Path) -> int:
    """Nanoseconds from a file stem in seconds ("1305031102.175304.png", as TUM RGB-D names them)."""
    try:
        return int(Decimal(path.stem) * NS)
    except InvalidOperation:
        raise ValueError(f"query image '{path.name}' is not named by its stamp in seconds (e.g. "
                         "'1305031102.175304.png'), so it cannot be matched to the ground truth") from None


def folder_queries(folder: str | Path, ground_truth: str | Path, camera: CameraModel | None,
                   max_gap_s: float = 0.2) -> tuple[int, Iterator[Query]]:
    """(count, queries) of a folder of images named by stamp, ground truth from a TUM file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"query folder '{folder}' does not exist")
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=stamp_of)
    if not files:
        raise ValueError(f"query folder '{folder}' has no images")
    truth = read_tum(ground_truth)

    def generate() -> Iterator[Query]:
        for path in files:
            stamp = stamp_of(path)
            pose, why = truth.pose_at(stamp, max_gap_s)
            yield Query(stamp, load_rgb(path), camera, pose, why)

    return len(files), generate()


def nees(pose: Pose, covariance: np.ndarray | None, truth: Pose) -> float | None:
    """e^T C^-1 e, e = (position error, rotation error as a map-frame rotation vector): the
    order and the left perturbation of ``map_pose``'s covariance."""
    if covariance is None or not np.all(np.isfinite(covariance)):
        return None
    T, G = pose_to_matrix(pose), pose_to_matrix(truth)
    rvec, _ = cv2.Rodrigues(T[:3, :3] @ G[:3, :3].T)
    error = np.concatenate([T[:3, 3] - G[:3, 3], rvec.reshape(3)])
    try:
        return float(error @ np.linalg.solve(covariance, error))
    except np.linalg.LinAlgError:
        return None


def run_query(relocalizer: Relocalizer, query: Query) -> QueryRecord:
    start = time.perf_counter()
    result = relocalizer.process(query.rgb, query.camera)
    pose = covariance = None
    keyframe, inliers, reason = "", 0, result.reason
    if result.accepted:
        best = result.keyframes[result.best.index]
        keyframe, inliers = best.name, result.best.inliers
        if best.pose is None:
            reason = f"keyframe '{best.name}' has no map pose"
        elif not result.pose.ok:
            reason = result.pose.reason
        else:
            pose, covariance = map_pose(best.pose, result.pose)
    latency = time.perf_counter() - start
    errors = pose_errors(pose, query.truth) if pose is not None and query.truth is not None else (None, None)
    value = nees(pose, covariance, query.truth) if pose is not None and query.truth is not None else None
    return QueryRecord(query.stamp_ns, result.accepted, keyframe, inliers, pose, covariance, query.truth, *errors,
                       value, latency, reason, dict(result.timings))


def evaluate(relocalizer: Relocalizer, queries: Iterable[Query], limit: int | None = None) -> Iterator[QueryRecord]:
    for n, query in enumerate(queries):
        if limit is not None and n >= limit:
            return
        yield run_query(relocalizer, query)


def _rate(count: int, total: int) -> float | None:
    return count / total if total else None


def summarize(records: list[QueryRecord]) -> dict[str, Any]:
    n = len(records)
    with_truth = [r for r in records if r.truth is not None]
    posed = [r for r in with_truth if r.pose is not None]
    wrong = [r for r in posed if r.wrong_place]
    latency = np.array([r.latency_s for r in records]) if records else np.zeros(0)
    nees_values = [r.nees for r in posed if r.nees is not None]
    summary: dict[str, Any] = {
        "queries": n,
        "with_ground_truth": len(with_truth),
        "accepted": sum(r.accepted for r in records),
        "poses": sum(r.pose is not None for r in records),
        "success_rate": _rate(len(posed) - len(wrong), len(with_truth)),
        "wrong_place_rate": _rate(len(wrong), len(with_truth)),
        "wrong_place_bound": {"m": WRONG_PLACE[0], "deg": WRONG_PLACE[1]},
    }
    for metres, degrees in RECALLS:
        hits = sum(r.position_error_m <= metres and r.rotation_error_deg <= degrees for r in posed)
        summary[f"recall_{round(metres * 100)}cm_{degrees:g}deg"] = _rate(hits, len(with_truth))
    summary["median_position_error_m"] = float(np.median([r.position_error_m for r in posed])) if posed else None
    summary["median_rotation_error_deg"] = float(np.median([r.rotation_error_deg for r in posed])) if posed else None
    for p in (50, 90, 99):
        summary[f"latency_p{p}_s"] = float(np.percentile(latency, p)) if n else None
    summary["mean_nees"] = float(np.mean(nees_values)) if nees_values else None
    summary["nees_count"] = len(nees_values)
    reasons: dict[str, int] = {}
    for r in records:
        if r.reason:
            key = r.reason.split(":")[0][:80]
            reasons[key] = reasons.get(key, 0) + 1
    summary["reject_reasons"] = dict(sorted(reasons.items(), key=lambda kv: -kv[1]))
    return summary


def summary_text(summary: dict[str, Any]) -> str:
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f} %"

    def num(v, unit, scale=1.0, digits=3):
        return "-" if v is None else f"{v * scale:.{digits}g} {unit}"

    rows = [("queries", str(summary["queries"])), ("with ground truth", str(summary["with_ground_truth"])),
            ("accepted / with a pose", f"{summary['accepted']} / {summary['poses']}"),
            ("success rate", pct(summary["success_rate"])),
            (f"wrong-place rate (> {WRONG_PLACE[0]:g} m or {WRONG_PLACE[1]:g} deg)", pct(summary["wrong_place_rate"]))]
    rows += [(f"recall at ({round(m * 100)} cm, {d:g} deg)", pct(summary[f"recall_{round(m * 100)}cm_{d:g}deg"]))
             for m, d in RECALLS]
    rows += [("median position error", num(summary["median_position_error_m"], "cm", 100)),
             ("median rotation error", num(summary["median_rotation_error_deg"], "deg")),
             ("latency p50 / p90 / p99", " / ".join(num(summary[f"latency_p{p}_s"], "ms", 1000) for p in (50, 90, 99))),
             ("mean NEES (6 = consistent)", "-" if summary["mean_nees"] is None else
              f"{summary['mean_nees']:.3g} over {summary['nees_count']} poses")]
    rows += [(f"  no pose: {why}", str(count)) for why, count in summary["reject_reasons"].items()]
    width = max(len(k) for k, _ in rows)
    return "".join(f"{k.ljust(width)}  {v}\n" for k, v in rows)


CSV_FIELDS = ("stamp", "accepted", "keyframe", "inliers", "x", "y", "z", "qx", "qy", "qz", "qw",
              "position_error_m", "rotation_error_deg", "nees", "latency_s", "reason")


def _cell(v: float | None, fmt: str = ".6g") -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def csv_text(records: list[QueryRecord]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for r in records:
        pose = [*r.pose[0], *r.pose[1]] if r.pose is not None else [None] * 7
        writer.writerow([f"{r.stamp_ns // NS}.{r.stamp_ns % NS:09d}", int(r.accepted), r.keyframe, r.inliers,
                         *(_cell(v, ".9g") for v in pose), _cell(r.position_error_m), _cell(r.rotation_error_deg),
                         _cell(r.nees), f"{r.latency_s:.4f}", r.reason])
    return out.getvalue()


def write_outputs(records: list[QueryRecord], summary: dict[str, Any], out: str | Path,
                  figures: dict[str, bytes] | None = None) -> list[Path]:
    """trajectory.tum, ground_truth.tum, queries.csv, summary.json, summary.txt and the figures
    (``plots.plots``), each written atomically."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder '{out}' is a file")
    posed = [r for r in records if r.pose is not None]
    files = {"trajectory.tum": tum_lines([r.stamp_ns for r in posed], [r.pose for r in posed]).encode(),
             "ground_truth.tum": tum_lines([r.stamp_ns for r in records if r.truth is not None],
                                           [r.truth for r in records if r.truth is not None]).encode(),
             "queries.csv": csv_text(records).encode(),
             "summary.json": json.dumps(summary, indent=1).encode(),
             "summary.txt": summary_text(summary).encode()}
    files.update(figures or {})
    return [save_bytes(out / name, data) for name, data in files.items()]


def check_store_has_poses(keyframes: list) -> None:
    if not keyframes:
        raise BagError("the map has no keyframes: build it first (roma-keyframes import-bag)")
    if not any(k.posable for k in keyframes):
        raise BagError("no keyframe of the map has a pose, depth and intrinsics, so no query can get a metric "
                       "pose: import the map with --depth and --camera-info")

