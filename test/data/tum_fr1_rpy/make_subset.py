"""How this folder was made from the TUM RGB-D benchmark's fr1/rpy sequence (kept for the record).

    python make_subset.py SEQUENCE_DIR [DISTRACTOR_JPG ...]

SEQUENCE_DIR is an extracted ``rgbd_dataset_freiburg1_rpy`` (rgb.txt, depth.txt,
groundtruth.txt, rgb/, depth/). Keeps the frames at which the camera turns slower than
MAX_SPEED deg/s (fr1/rpy's median is 64 deg/s: there, the ground truth's time alignment and the
rolling shutter dominate any pose error), stores their RGB as JPEG, the depth of every third kept
frame as the original 16-bit PNG (5000 units per metre), and the ground-truth camera pose
interpolated at each RGB stamp (linear position, quaternion slerp) in frames.csv.
"""
from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
from scipy.spatial.transform import Rotation, Slerp

MAX_SPEED = 20.0       # deg/s, over +-50 ms around the RGB stamp
MAX_GT_GAP = 0.05      # s between the two ground-truth samples used for interpolation
MAX_DEPTH_OFFSET = 0.02  # s between RGB and depth stamps
KEYFRAME_EVERY = 3
JPEG_QUALITY = 92


def read_list(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def pose_at(gt: np.ndarray, stamp: float) -> np.ndarray | None:
    i = int(np.searchsorted(gt[:, 0], stamp))
    if i == 0 or i >= len(gt) or gt[i, 0] - gt[i - 1, 0] > MAX_GT_GAP:
        return None
    a = (stamp - gt[i - 1, 0]) / (gt[i, 0] - gt[i - 1, 0])
    T = np.eye(4)
    T[:3, :3] = Slerp([0.0, 1.0], Rotation.from_quat(gt[i - 1:i + 1, 4:8]))(a).as_matrix()
    T[:3, 3] = (1 - a) * gt[i - 1, 1:4] + a * gt[i, 1:4]
    return T


def main(source: Path, distractors: list[Path], out: Path) -> None:
    gt = np.array([[float(x) for x in row] for row in read_list(source / "groundtruth.txt")])
    depth = [(float(t), f) for t, f in read_list(source / "depth.txt")]
    depth_stamps = np.array([t for t, _ in depth])
    rows = []
    for stamp_text, rgb_file in read_list(source / "rgb.txt"):
        stamp = float(stamp_text)
        T, before, after = pose_at(gt, stamp), pose_at(gt, stamp - 0.05), pose_at(gt, stamp + 0.05)
        j = int(np.argmin(np.abs(depth_stamps - stamp)))
        if T is None or before is None or after is None or abs(depth_stamps[j] - stamp) > MAX_DEPTH_OFFSET:
            continue
        speed = np.degrees(Rotation.from_matrix(before[:3, :3].T @ after[:3, :3]).magnitude()) / 0.1
        if speed < MAX_SPEED:
            rows.append((stamp_text, rgb_file, depth[j][1], T, speed))
    (out / "rgb").mkdir(parents=True, exist_ok=True)
    (out / "depth").mkdir(exist_ok=True)
    with open(out / "frames.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "stamp", "depth", "tx", "ty", "tz", "qx", "qy", "qz", "qw", "speed_deg_s"])
        for n, (stamp, rgb_file, depth_file, T, speed) in enumerate(rows):
            name = f"f{n:02d}"
            image = cv2.imread(str(source / rgb_file), cv2.IMREAD_COLOR)
            cv2.imwrite(str(out / "rgb" / f"{name}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            kept_depth = ""
            if n % KEYFRAME_EVERY == 0:
                kept_depth = f"depth/{name}.png"
                shutil.copyfile(source / depth_file, out / kept_depth)
            q = Rotation.from_matrix(T[:3, :3]).as_quat()
            w.writerow([name, stamp, kept_depth, *(f"{v:.6f}" for v in T[:3, 3]), *(f"{v:.6f}" for v in q),
                        f"{speed:.1f}"])
    (out / "distractors").mkdir(exist_ok=True)
    for n, path in enumerate(distractors):
        cv2.imwrite(str(out / "distractors" / f"d{n}.jpg"), cv2.imread(str(path)),
                    [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    print(f"{len(rows)} frames, {len(range(0, len(rows), KEYFRAME_EVERY))} with depth")


if __name__ == "__main__":
    main(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]], Path(__file__).resolve().parent)
