"""`roma-keyframes`: add, list, remove, export, import and check keyframes, build their feature
cache, and import them from a rosbag2 recording (mapping/importer.py).

Works on the same folder and through the same code (KeyframeStore, FeatureCache)
as the node. A running node sees keyframes added by another process before its next query;
after removals or edits it reloads by itself too (KeyframeStore.poll).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from roma_ros.cli.bag_options import add_pose_source_arguments, pose_source
from roma_ros.cli.model_options import add_model_arguments, model_config
from roma_ros.store import check_registered, read_depth_raw, to_metres, valid_fraction
from roma_ros.mapping.keyframing import KeyframeRule
from roma_ros.store.check import check_store
from roma_ros.store.folder import DEFAULT_DIR, INTRINSICS_KEYS, Keyframe, KeyframeStore, _parse_pose, parse_intrinsics

PROG = "roma-keyframes"


class CommandError(Exception):
    """A user error: reported as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", default=DEFAULT_DIR,
                        help=f"keyframe folder (default: {DEFAULT_DIR}, the node's default keyframes_dir)")
    p = argparse.ArgumentParser(prog=PROG, description="Manage the keyframe folder that match_node reads.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add = sub.add_parser("add", parents=[common], help="copy images into the store as keyframes")
    add.add_argument("images", nargs="+", metavar="IMAGE")
    add.add_argument("--name", help="keyframe name (one image only; default: the file's stem)")
    add.add_argument("--pose", nargs=7, type=float, metavar=("X", "Y", "Z", "QX", "QY", "QZ", "QW"),
                     help="pose of the camera's optical frame (x right, y down, z forward) in the map frame "
                          "(one image only)")
    add.add_argument("--intrinsics", nargs=4, type=float, metavar=("FX", "FY", "CX", "CY"),
                     help="pinhole intrinsics in pixels, OpenCV/ROS convention (pixel centres at integers; "
                          "as CameraInfo K)")
    add.add_argument("--depth", metavar="FILE",
                     help="depth map registered to the image, same size: 16-bit PNG (mm), float TIFF or .npy (m)")
    add.add_argument("--depth-scale", type=float, metavar="S",
                     help="metres per stored depth unit (default: 0.001 for 16-bit, 1.0 for float)")

    sub.add_parser("list", parents=[common], help="table of the keyframes in load order")
    remove = sub.add_parser("remove", parents=[common], help="delete a keyframe, its image and cached features")
    remove.add_argument("name")

    cache = sub.add_parser("build-cache", parents=[common], help="compute the feature cache the node would load",
                           description="Use the node's model, weights, device and resolution: the cache folder "
                                       "is named after all of them (a GPU run caches another precision than CPU).")
    add_model_arguments(cache)
    cache.add_argument("--keep-vgg", action="store_true", help="as the node's keep_vgg parameter")

    add_import_arguments(sub.add_parser(
        "import-bag", parents=[common], help="build keyframes from a rosbag2 recording (sqlite3 or MCAP)",
        description="Select keyframes by pose (moved --min-distance or turned --min-angle from every stored "
                    "keyframe, or --max-interval since the last) and store image, depth, intrinsics and pose. "
                    "Run it again after an interruption: frames already stored are skipped."))
    export = sub.add_parser("export", parents=[common], help="write the index as keyframes.yaml (to edit by hand)",
                            description="The index is keyframes.db; keyframes.yaml is its editable copy. An edited "
                                        "keyframes.yaml is imported on the next open (or by `import`).")
    export.add_argument("-o", "--output", metavar="FILE", help="write here instead of <dir>/keyframes.yaml")
    imp = sub.add_parser("import", parents=[common], help="merge a keyframes.yaml into the index",
                         description="Entries update the keyframe of the same image or are appended; with the "
                                     "folder's own keyframes.yaml, entries deleted since the last export are dropped "
                                     "from the index (their images stay).")
    imp.add_argument("file", nargs="?", metavar="FILE", help="default: <dir>/keyframes.yaml")

    check = sub.add_parser("check", parents=[common], help="report (and --repair) problems of the store")
    check.add_argument("--repair", action="store_true",
                       help="fix what can be fixed; user images are moved aside, never deleted")
    return p


def add_import_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bag", metavar="BAG", help="rosbag2 folder (or its .db3 / .mcap file)")
    p.add_argument("--image", required=True, metavar="TOPIC", help="sensor_msgs/Image or CompressedImage topic")
    p.add_argument("--depth", metavar="TOPIC", help="depth registered to the image: 16UC1 (mm) or 32FC1 (m)")
    p.add_argument("--camera-info", metavar="TOPIC", help="sensor_msgs/CameraInfo of the image (intrinsics)")
    p.add_argument("--depth-tolerance", type=float, default=0.02, metavar="S",
                   help="largest image-depth stamp difference (default: %(default)s s)")
    add_pose_source_arguments(p)
    defaults = KeyframeRule()
    p.add_argument("--min-distance", type=float, default=defaults.min_distance, metavar="M",
                   help="new keyframe when moved at least this far from every keyframe (default: %(default)s m)")
    p.add_argument("--min-angle", type=float, default=defaults.min_angle_deg, metavar="DEG",
                   help="... or turned at least this much (default: %(default)s deg)")
    p.add_argument("--max-interval", type=float, default=defaults.max_interval_s, metavar="S",
                   help="... or this long after the last keyframe; 0 = never (default: %(default)s s)")
    p.add_argument("--build-cache", action="store_true", help="build the feature cache afterwards (model options)")
    add_model_arguments(p)
    p.add_argument("--keep-vgg", action="store_true", help="as the node's keep_vgg parameter (--build-cache)")


def existing_store(directory: str) -> KeyframeStore:
    store = KeyframeStore(directory)
    if not store.directory.is_dir():
        raise CommandError(f"keyframe folder '{store.directory}' does not exist")
    return store


def warn(lines: list[str]) -> None:
    for line in lines:
        print(f"{PROG}: warning: {line}", file=sys.stderr)


def cmd_add(args: argparse.Namespace) -> int:
    from roma_ros.core.imageio import load_rgb

    if len(args.images) > 1 and (args.name or args.pose or args.depth or args.intrinsics):
        raise CommandError("--name, --pose, --intrinsics and --depth go with a single IMAGE")
    if args.depth_scale is not None and not args.depth:
        raise CommandError("--depth-scale needs --depth")
    pose = None
    if args.pose:
        pose = _parse_pose({"position": args.pose[:3], "orientation": args.pose[3:]}, "--pose")
    intrinsics = parse_intrinsics(dict(zip(INTRINSICS_KEYS, args.intrinsics)), "--intrinsics") if args.intrinsics else None
    images = [(path, load_rgb(path)) for path in args.images]  # all readable before any is added
    depth = read_depth(args.depth, args.depth_scale, images[0][1].shape) if args.depth else None
    store = KeyframeStore(args.dir)
    if store.directory.is_dir() and store.has_unindexed():
        store.load()  # image files without an entry get one first, so the printed index stays theirs
        warn(store.warnings)
    for path, rgb in images:  # no load of the whole map: an add costs the same at 10 or 100 000 keyframes
        keyframe = store.add(rgb, [], name=args.name or Path(path).stem, pose=pose, intrinsics=intrinsics,
                             depth=depth, depth_scale=args.depth_scale)
        print(f"added '{keyframe.name}' (index {store.position(keyframe)}) as {store.directory / keyframe.image_file}")
        if keyframe.depth is not None:
            print(f"  depth {store.directory / keyframe.depth_file}: {valid_fraction(keyframe.depth):.0%} valid, "
                  f"{np.nanmin(keyframe.depth):.3g} to {np.nanmax(keyframe.depth):.3g} m"
                  if np.isfinite(keyframe.depth).any() else "  depth: no valid pixel")
    return 0


def read_depth(path: str, scale: float | None, image_shape: tuple[int, ...]) -> np.ndarray:
    """The depth file as ``KeyframeStore.add`` takes it: 16-bit kept in its units (stored
    losslessly with its scale), anything else in metres; its size must be the image's."""
    raw = read_depth_raw(path)
    metres = to_metres(raw, scale, source=f"depth file '{path}'")  # validates type and scale
    check_registered(metres.shape, image_shape, f"depth file '{path}'")
    return raw if raw.dtype == np.uint16 else metres


def format_pose(keyframe: Keyframe) -> str:
    if keyframe.pose is None:
        return "-"
    position, orientation = keyframe.pose
    return " ".join(f"{v:g}" for v in position) + " | " + " ".join(f"{v:g}" for v in orientation)


def format_depth(keyframe: Keyframe) -> str:
    if keyframe.depth is None:
        return "-"
    return f"{keyframe.depth_file} ({valid_fraction(keyframe.depth):.0%} valid)"


def format_intrinsics(keyframe: Keyframe) -> str:
    if not keyframe.intrinsics:
        return "-"
    text = " ".join(f"{keyframe.intrinsics[key]:g}" for key in INTRINSICS_KEYS)
    return text + (" +distortion" if keyframe.intrinsics.get("distortion") else "")


def cmd_list(args: argparse.Namespace) -> int:
    store = existing_store(args.dir)
    keyframes = store.load()
    warn(store.warnings)
    if not keyframes:
        print(f"no keyframes in {store.directory}")
        return 0
    rows = [("index", "name", "image", "size", "pose (x y z | qx qy qz qw)", "added", "depth", "intrinsics")]
    rows += [(str(i), k.name, k.image_file, f"{k.image.shape[1]}x{k.image.shape[0]}", format_pose(k), k.added or "-",
              format_depth(k), format_intrinsics(k)) for i, k in enumerate(keyframes)]
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"{len(keyframes)} keyframes in {store.directory}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from roma_ros.store import UnknownKeyframe

    store = existing_store(args.dir)
    try:
        removed = store.remove(args.name)
    except UnknownKeyframe as exc:
        raise CommandError(str(exc)) from None
    files = ", ".join(str(p.relative_to(store.directory)) for p in removed.deleted) or "no files"
    print(f"removed '{removed.name}' ({removed.image_file}); deleted {files}")
    return 0


def cmd_build_cache(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from roma_ros.store.cache import cache_for
    from roma_ros.matching.registry import build_matcher

    store = existing_store(args.dir)
    config = model_config(args, keep_vgg=args.keep_vgg)
    cache = cache_for(matcher := build_matcher(config), store.directory)
    if cache is None:  # classical (and Tiny RoMa): keyframe work is cheap, nothing is kept on disk
        print(f"model {args.model} keeps no feature cache: nothing to build")
        return 0
    keyframes = store.load()
    warn(store.warnings)
    for keyframe in tqdm(keyframes, desc="keyframe features", unit="kf", disable=None):
        cache.prepare(matcher, keyframe.image_file, keyframe.image)
    warn(cache.stats.warnings)
    print(f"{len(keyframes)} keyframes: {cache.stats.loaded} loaded, {cache.stats.computed} computed; "
          f"cache folder {cache.folder or 'none (refused, see the warning)'}")
    return 0


def cmd_import_bag(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from roma_ros.mapping.importer import import_bag

    rule = KeyframeRule(args.min_distance, args.min_angle, args.max_interval)
    try:
        summary = import_bag(args.bag, args.dir, args.image, pose_source(args), args.depth, args.camera_info, rule,
                             args.depth_tolerance, warn=lambda line: warn([line]),
                             progress=lambda it, total: tqdm(it, total=total, desc="keyframes", unit="kf",
                                                             disable=None))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the keyframes written so far are complete: run the same command again to "
              "import the rest", file=sys.stderr)
        return 130
    for line in summary.lines():
        print(line)
    return cmd_build_cache(args) if args.build_cache else 0

def cmd_export(args: argparse.Namespace) -> int:
    store = existing_store(args.dir)
    path, count = store.export_yaml(args.output)
    warn(store.notes)
    print(f"wrote {count} entries to {path}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    store = existing_store(args.dir)
    count = store.import_yaml(args.file)
    total = len(store.entries())
    print(f"imported {count} entries from {args.file or store.index_path}; the index has {total} entries")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    store = existing_store(args.dir)
    lines = check_store(store, repair=args.repair)
    for line in lines:
        print(line)
    remaining = check_store(store) if args.repair else lines
    if remaining:
        if args.repair:
            print(f"{len(remaining)} problems remain:\n" + "\n".join(f"  {line}" for line in remaining))
        else:
            print(f"{len(lines)} problems; `{PROG} check --repair --dir {store.directory}` fixes them")
        return 1
    print(f"{store.directory}: " + ("repaired, no problems left" if lines else "no problems"))
    return 0


COMMANDS = {"add": cmd_add, "list": cmd_list, "remove": cmd_remove, "build-cache": cmd_build_cache,
            "export": cmd_export, "import": cmd_import, "check": cmd_check, "import-bag": cmd_import_bag}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import sqlite3

    from roma_ros.core.imageio import ImageFileError
    from roma_ros.matching.base import WeightsError

    try:
        return COMMANDS[args.command](args)
    except (CommandError, ImageFileError, WeightsError, ValueError, OSError, sqlite3.Error) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
