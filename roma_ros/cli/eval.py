"""`roma-eval`: how often, and how well, a recording relocalizes against a map.

Parsing and printing only; the work is mapping/evaluate.py (queries, records, summary) and
mapping/plots.py (figures), with the node's own Relocalizer, in-process and without DDS.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from roma_ros.cli.bag_options import add_pose_source_arguments, pose_source
from roma_ros.cli.model_options import add_model_arguments, model_config

PROG = "roma-eval"
# The node's decision defaults per model (ros/params.py's model_defaults; test_eval.py checks they agree):
# SIFT keypoints are located to about a pixel, RoMa's to a fraction of one.
MODEL_DECISION = {"classical": {"threshold": 1.0, "min_inliers": 20}}


def build_parser() -> argparse.ArgumentParser:
    from roma_ros.localize.pipeline import DecisionConfig

    p = argparse.ArgumentParser(
        prog=PROG, description="Replay a recording (a rosbag2, or images named by stamp + a TUM file) through the "
        "relocalizer against a keyframe map; write the relocalized trajectory (TUM), one CSV row per query, a "
        "summary (success rate, wrong-place rate, recall, errors, latency) and plots.")
    p.add_argument("bag", nargs="?", metavar="BAG", help="rosbag2 folder of the queries (or use --images)")
    p.add_argument("--dir", required=True, help="the keyframe map (e.g. built by roma-keyframes import-bag)")
    p.add_argument("--out", required=True, help="folder for trajectory.tum, queries.csv, summary.* and the plots")
    p.add_argument("--image", metavar="TOPIC", help="image topic of BAG")
    p.add_argument("--camera-info", metavar="TOPIC", help="CameraInfo topic of BAG (needed for metric poses)")
    add_pose_source_arguments(p)
    folder = p.add_argument_group("queries from files")
    folder.add_argument("--images", metavar="FOLDER", help="query images named by their stamp in seconds")
    folder.add_argument("--ground-truth", metavar="TUM", help="TUM file: stamp x y z qx qy qz qw of the optical frame")
    folder.add_argument("--intrinsics", nargs=4, type=float, metavar=("FX", "FY", "CX", "CY"),
                        help="query intrinsics in pixels, CameraInfo convention")
    add_model_arguments(p)
    defaults = DecisionConfig()
    p.add_argument("--min-inliers", type=int, help=f"as the node (default: {defaults.min_inliers}; classical: "
                   f"{MODEL_DECISION['classical']['min_inliers']})")
    p.add_argument("--ransac-threshold", type=float, metavar="PX",
                   help=f"F inlier threshold, as the node's ransac.threshold (default: {defaults.threshold}; "
                        f"classical: {MODEL_DECISION['classical']['threshold']})")
    p.add_argument("--top-k", type=int, default=defaults.top_k, help="as the node (default: %(default)s)")
    p.add_argument("--max-queries", type=int, metavar="N", help="stop after N queries")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from roma_ros.core.imageio import ImageFileError
    from roma_ros.matching.base import WeightsError

    try:
        return run(args)
    except (ImageFileError, WeightsError, ValueError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


def decision_config(args: argparse.Namespace):
    from roma_ros.localize.pipeline import DecisionConfig

    chosen = {"min_inliers": args.min_inliers, "threshold": args.ransac_threshold}
    settings = {**MODEL_DECISION.get(args.model, {}), **{k: v for k, v in chosen.items() if v is not None}}
    return DecisionConfig(top_k=args.top_k, **settings)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from roma_ros.core.camera import CameraModel
    from roma_ros.localize.pipeline import Relocalizer
    from roma_ros.mapping import evaluate as ev
    from roma_ros.mapping.plots import plots
    from roma_ros.matching.registry import build_matcher
    from roma_ros.store import KeyframeStore
    from roma_ros.store.cache import cache_for

    if bool(args.bag) == bool(args.images):
        raise ValueError("give the queries either as BAG (with --image) or as --images FOLDER --ground-truth TUM")
    if args.bag and not args.image:
        raise ValueError("BAG needs --image TOPIC")
    if args.images and not args.ground_truth:
        raise ValueError("--images needs --ground-truth TUM")
    store = KeyframeStore(args.dir)
    if not store.directory.is_dir():
        raise ValueError(f"keyframe map '{store.directory}' does not exist")
    keyframes = store.load()
    for line in store.warnings:
        print(f"{PROG}: warning: {line}", file=sys.stderr)
    ev.check_store_has_poses(keyframes)
    if args.bag:
        count, queries = ev.bag_queries(args.bag, args.image, pose_source(args), args.camera_info)
    else:
        camera = CameraModel.from_ros(*args.intrinsics) if args.intrinsics else None
        count, queries = ev.folder_queries(args.images, args.ground_truth, camera, args.max_pose_gap)
    matcher = build_matcher(model_config(args))
    relocalizer = Relocalizer(matcher, decision_config(args))
    relocalizer.set_keyframes(keyframes, cache_for(matcher, store.directory))
    total = count if args.max_queries is None else min(count, args.max_queries)
    records = list(tqdm(ev.evaluate(relocalizer, queries, args.max_queries), total=total, desc="queries",
                        unit="q", disable=None))
    summary = ev.summarize(records)
    positions = np.array([k.pose[0] for k in keyframes if k.pose is not None]).reshape(-1, 3)
    written = ev.write_outputs(records, summary, args.out, plots(records, positions))
    print(ev.summary_text(summary), end="")
    print(f"wrote {', '.join(p.name for p in written)} to {Path(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
