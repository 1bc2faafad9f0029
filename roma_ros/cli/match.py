"""`roma-match QUERY CANDIDATE`: RoMa's two-image demo as a command-line tool."""
from __future__ import annotations

import argparse
import tempfile
import sys
import time
from pathlib import Path

import numpy as np

from roma_ros.cli.model_options import add_model_arguments, model_config
from roma_ros.cli.pose_options import (
    add_pose_arguments, check_cameras, check_depth_size, compute_pose, pose_inputs, pose_json, pose_line,
)
from roma_ros.matching.base import WeightsError
from roma_ros.matching.registry import build_matcher

RANSAC_CHOICES = ("usac_magsac", "ransac", "lmeds")


def parse_thresholds(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of numbers") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("thresholds must be positive numbers, e.g. 0.2,0.1,0.05")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="roma-match",
        description="Dense matching of two images with RoMa, verified by a fundamental matrix; with "
                    "intrinsics (and keyframe depth) also the query camera's pose relative to the candidate.",
    )
    p.add_argument("query", help="query image file")
    p.add_argument("candidate", help="candidate (keyframe) image file")
    add_model_arguments(p)
    p.add_argument("--one-way", action="store_true", help="non-symmetric matching (faster)")
    p.add_argument("--num-samples", type=int, default=10000)
    p.add_argument("--sampler", choices=("grid", "romatch"), default="grid",
                   help="grid: fast balanced sampler; romatch: romatch's KDE sampler (slow on CPU)")
    p.add_argument("--resize-to-model", action="store_true",
                   help="report pixels of the images resized to the model's output resolution (RoMa demo)")
    p.add_argument("--ransac", choices=RANSAC_CHOICES, default="usac_magsac")
    p.add_argument("--threshold", type=float, default=0.2, help="RANSAC threshold in pixels")
    p.add_argument("--confidence", type=float, default=0.999999)
    p.add_argument("--max-iters", type=int, default=10000)
    p.add_argument("--max-lines", type=int, default=50, help="inlier lines to draw (-1: all)")
    p.add_argument("-o", "--output", help="write the debug picture (PNG) here")
    p.add_argument("--json", help="write matches, inliers and timings as JSON here")
    p.add_argument("--thresholds", type=parse_thresholds,
                   help="comma-separated RANSAC thresholds for an inlier-count table, e.g. 0.2,0.1,0.05,0.01")
    p.add_argument("--plot", help="with --thresholds: write a chart of inliers against threshold")
    add_pose_arguments(p)
    return p


def check_outputs(args: argparse.Namespace) -> None:
    """Output paths that cannot be written fail before the (slow) match, as one ValueError."""
    for flag, value in (("-o/--output", args.output), ("--json", args.json), ("--plot", args.plot)):
        if not value:
            continue
        path = Path(value)
        if path.is_dir():
            raise ValueError(f"{flag} '{path}' is a folder: give a file name, e.g. '{path / 'out'}'")
        parent = path.parent
        if not parent.is_dir():
            raise ValueError(f"{flag} '{path}': folder '{parent}' does not exist; create it first")
        try:  # files are written through a temp file beside them (atomic): try one
            with tempfile.TemporaryFile(dir=parent):
                pass
        except OSError as exc:
            raise ValueError(f"{flag} '{path}': cannot create files in folder '{parent}' "
                             f"({exc.strerror or exc}); choose another place") from None


def run(args: argparse.Namespace) -> int:
    from roma_ros.localize.geometry import inlier_counts_for_thresholds, verify_fundamental
    from roma_ros.core.imageio import load_rgb, save_json, save_rgb
    from roma_ros.localize.visualize import draw_matches, plot_inliers_vs_threshold

    timings: dict[str, float] = {}

    def stage(name: str, start: float) -> None:
        timings[name] = round(time.perf_counter() - start, 4)

    pose_in = pose_inputs(args)  # bad pose options fail before anything slow
    check_outputs(args)
    t = time.perf_counter()
    query, candidate = load_rgb(args.query), load_rgb(args.candidate)
    stage("load_images", t)
    if pose_in is not None:
        check_depth_size(pose_in, candidate.shape, args.keyframe_depth)
        check_cameras(pose_in, query.shape, candidate.shape)
    config = model_config(args, symmetric=not args.one_way, num_samples=args.num_samples, sampler=args.sampler,
                          resize_to_model=args.resize_to_model)
    t = time.perf_counter()
    matcher = build_matcher(config)
    stage("build_model", t)
    t = time.perf_counter()
    matches = matcher.match(query, candidate)
    stage("match", t)
    ransac = dict(method=args.ransac, confidence=args.confidence, max_iters=args.max_iters)
    t = time.perf_counter()
    result = verify_fundamental(matches.kpts_query, matches.kpts_candidate, threshold=args.threshold, **ransac)
    stage("verify", t)

    pose = None
    if pose_in is not None:
        t = time.perf_counter()
        inl = result.inlier_mask
        pose = compute_pose(pose_in, matches.kpts_query[inl], matches.kpts_candidate[inl], result.verified,
                            result.reason)
        stage("pose", t)

    print(f"model {matcher.name} on {matcher.device}: {len(matches)} matches, "
          f"{result.num_inliers} inliers at {args.threshold} px ({args.ransac})")
    if not result.verified:
        print(f"not verified: {result.reason}")
    if pose is not None:
        print(pose_line(pose))
    if args.thresholds:
        counts = inlier_counts_for_thresholds(matches.kpts_query, matches.kpts_candidate, args.thresholds, **ransac)
        print("threshold_px  inliers")
        for thr, count in zip(args.thresholds, counts):
            print(f"{thr:>12g}  {count:>7d}")
        if args.plot:
            plot_inliers_vs_threshold(args.thresholds, counts, args.plot)
            print(f"plot written to {args.plot}")
    if args.output:
        t = time.perf_counter()
        if args.resize_to_model:
            import cv2
            h, w = matcher.output_hw(query.shape[:2])
            query, candidate = (cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA) for im in (query, candidate))
        order = np.argsort(-matches.certainty, kind="stable")
        text = (f"{matcher.name} | {len(matches)} matches | {result.num_inliers} inliers "
                f"@ {args.threshold} px | match {timings['match']:.2f} s")
        picture = draw_matches(query, candidate, matches.kpts_query, matches.kpts_candidate,
                               result.inlier_mask, max_lines=args.max_lines, text=text, line_order=order)
        save_rgb(args.output, picture)
        stage("draw", t)
        print(f"debug picture written to {args.output}")
    print("timings [s]: " + ", ".join(f"{k} {v:.3f}" for k, v in timings.items()))
    if args.json:
        save_json(args.json, {
            "model": matcher.name,
            "query": str(args.query),
            "candidate": str(args.candidate),
            "image_sizes": {"query": list(query.shape[:2]), "candidate": list(candidate.shape[:2])},
            "num_matches": len(matches),
            "inliers": result.num_inliers,
            "verified": result.verified,
            "reason": result.reason,
            "F": None if result.F is None else np.asarray(result.F).tolist(),
            "matches": np.column_stack([matches.kpts_query, matches.kpts_candidate, matches.certainty]).tolist(),
            "inlier_mask": [bool(v) for v in result.inlier_mask],
            "pose": None if pose is None else pose_json(pose),
            "timings": timings,
        })
        print(f"json written to {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from roma_ros.core.imageio import ImageFileError

    try:
        return run(args)
    except (ImageFileError, WeightsError, ValueError) as exc:
        print(f"roma-match: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an output that cannot be written after all (/proc, a full disk, ...)
        where = f" '{exc.filename}'" if exc.filename else ""
        print(f"roma-match: error: cannot write{where}: {exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
