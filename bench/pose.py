"""Relocalization pose accuracy on a synthetic sequence with known poses, and the pose step's cost.

The sequence comes from roma_ros.demo.synthetic_scene: a room of textured planes (scikit-image
photos) with exact depth, five posed keyframes and N queries under strong viewpoint change
(0.6 to 1.8 m and 7 to 30 deg away from their keyframe, other exposure and noise). Each
query is matched against three keyframes (retrieval is bench/place_recognition.py's job):
- "near": the keyframe it was drawn near: the headline accuracy;
- "far": the keyframe two stations further on (a much larger viewpoint change): weaker matches,
  where the gates have work to do;
- "distractor": a view of another room (same geometry, pictures that never appear in the first)
  from its own keyframe's station: the right answer is "no pose".
Each pair is verified by F like the node, and the pose is computed from the F inliers with the
node's default gates (PoseConfig), and once more with the gates off for the sweep.

Matchers: ``classical`` (OpenCV SIFT, F threshold 1.0 px, as the node's classical defaults) and
``roma_random`` (RoMa outdoor with RANDOM weights at coarse 112, no upsampling, F threshold
0.2 px): plumbing only, its accuracy means nothing. Reported: median translation and rotation
error of the published poses, the share of ALL queries within (5 cm, 5 deg) and (25 cm, 2 deg) (no
pose counts as a miss), distractor poses published, the mean NEES of the published poses (6 if the
covariance were exact), the margins of right and false estimates to the gates, and one-gate-at-a-
time sweeps (how PoseConfig's defaults were checked).

Then the pose step alone (estimate_pose: depth lookup, PnP RANSAC, refinement, covariance) for
10 000 matches on the CPU: median of repeats, as a ratio to the 10 ms target and to a bare
cv2.solvePnPRansac on the same points in the same process.

    .venv/bin/python bench/pose.py                     # CPU, a few minutes (RoMa: most of it)
    .venv/bin/python bench/pose.py --models classical --queries 20 --timing-repeats 50
    .venv/bin/python bench/pose.py --timing-only
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, replace

import cv2
import numpy as np

from roma_ros.demo import synthetic_scene as ss
from roma_ros.localize.geometry import verify_fundamental
from roma_ros.localize.pose import PoseConfig, PoseEstimate, back_project, estimate_pose, lookup_depth, rotation_angle_deg

TARGET_MS = 10.0
THRESHOLDS = ((0.05, 5.0), (0.25, 2.0))  # (metres, degrees): the usual relocalization bins
RELAXED = dict(min_inliers=6, min_inlier_ratio=0.0, max_rmse=1e9)  # gates off: the sweep applies them
SWEEP = {"min_inliers": (6, 10, 20, 30, 50, 100), "ratio": (0.0, 0.2, 0.4, 0.6, 0.8), "rmse": (0.75, 1.0, 1.5, 2.0)}
GATE_NAMES = {"min_inliers": "min_inliers", "ratio": "min_inlier_ratio", "rmse": "max_rmse (px)"}


@dataclass
class Row:
    name: str
    kind: str                   # "near" (its own keyframe), "far" (another keyframe) or "distractor"
    matches: int
    verified: bool
    est: PoseEstimate           # with the default gates
    relaxed: PoseEstimate       # gates off (for the sweep)
    t_err: float = math.nan
    r_err: float = math.nan
    nees: float = math.nan


def matchers(names: list[str]):
    from roma_ros.matching import MatcherConfig, build_matcher

    for name in names:
        if name == "classical":
            yield name, "OpenCV SIFT, ratio test + mutual check, F threshold 1.0 px", \
                build_matcher(MatcherConfig(model="classical")), 1.0, ("near", "far", "distractor")
        elif name == "roma_random":
            config = MatcherConfig(model="roma_outdoor", device="cpu", coarse_res=112, upsample_res=0,
                                   random_weights=True, num_samples=10000, allow_download=False)
            # Its own keyframes only: every pair is noise to a random network, and each costs seconds.
            yield name, "RoMa outdoor, RANDOM weights, coarse 112, no upsampling (plumbing only: accuracy " \
                        "meaningless), F threshold 0.2 px, own keyframes only", build_matcher(config), 0.2, ("near",)
        else:
            raise SystemExit(f"unknown matcher '{name}'")


def errors(est: PoseEstimate, keyframe: ss.View, query: ss.View) -> tuple[float, float, float]:
    """(translation error m, rotation error deg, NEES) against the ground truth."""
    R, t = ss.relative_pose(keyframe, query)
    dt = est.translation - t
    dR = est.rotation @ R.T
    dtheta = cv2.Rodrigues(dR)[0].ravel()
    e = np.concatenate([dt, dtheta])
    nees = float(e @ np.linalg.solve(est.covariance, e)) if est.covariance is not None else math.nan
    return float(np.linalg.norm(dt)), rotation_angle_deg(est.rotation, R), nees


def run_matcher(matcher, threshold: float, pairs, config: PoseConfig) -> list[Row]:
    relaxed_config = replace(config, **RELAXED)
    rows = []
    for query, keyframe, kind in pairs:
        m = matcher.match(query.rgb, keyframe.rgb)
        ver = verify_fundamental(m.kpts_query, m.kpts_candidate, threshold=threshold)
        kq, kk = m.kpts_query[ver.inlier_mask], m.kpts_candidate[ver.inlier_mask]
        args = (kq, kk, keyframe.depth, keyframe.camera, query.camera)
        none = PoseEstimate(False, f"not verified: {ver.reason}", "pnp", False, None, None)
        est = estimate_pose(*args, config) if ver.verified else none
        relaxed = estimate_pose(*args, relaxed_config) if ver.verified else none
        row = Row(query.name, kind, len(m), ver.verified, est, relaxed)
        if relaxed.rotation is not None and kind != "distractor":
            row.t_err, row.r_err, row.nees = errors(relaxed, keyframe, query)
        rows.append(row)
    return rows


def correct(row: Row, bound=THRESHOLDS[1]) -> bool:
    return row.kind != "distractor" and row.t_err <= bound[0] and row.r_err <= bound[1]


def published(row: Row, min_inliers: int, ratio: float, rmse: float) -> bool:
    """Would the relaxed estimate pass these gates?"""
    e = row.relaxed
    return (e.rotation is not None and e.covariance is not None and e.inliers >= min_inliers
            and e.inliers >= ratio * e.points and e.rmse_px <= rmse)


def report(name: str, rows: list[Row], config: PoseConfig) -> None:
    print("  query  pair  matches  F  pnp_pts inliers rmse_px  std_cm  t_err_cm  r_err_deg    NEES  published / reason")
    for r in rows:
        if r.kind == "distractor":
            continue
        e = r.est
        std = f"{100 * e.position_std:7.2f}" if e.covariance is not None else "      -"
        rmse = f"{e.rmse_px:7.2f}" if e.rmse_px is not None and math.isfinite(e.rmse_px) else "      -"
        errs = f"{100 * r.t_err:9.2f}  {r.r_err:9.3f} {r.nees:7.1f}" if math.isfinite(r.t_err) else \
            f"{'-':>9}  {'-':>9} {'-':>7}"
        print(f"  {r.name:6s} {r.kind:4s} {r.matches:8d} {'y' if r.verified else 'n'} {e.points:8d} {e.inliers:7d} "
              f"{rmse} {std}  {errs}  {'yes' if e.ok else 'no: ' + e.reason[:70]}")
    for kind, text in (("near", "queries against their own keyframe"), ("far", "queries against a farther keyframe")):
        queries = [r for r in rows if r.kind == kind]
        if not queries:
            continue
        ok = [r for r in queries if r.est.ok]
        med = (f"median error {100 * statistics.median(r.t_err for r in ok):.2f} cm, "
               f"{statistics.median(r.r_err for r in ok):.3f} deg" if ok else "no pose published")
        bins = ", ".join(f"within ({100 * d:g} cm, {a:g} deg) {sum(correct(r, (d, a)) for r in ok) / len(queries):.0%}"
                         for d, a in THRESHOLDS)
        nees = [r.nees for r in ok if math.isfinite(r.nees)]
        print(f"[{name}] {text}: {len(ok)}/{len(queries)} poses published; {med}; {bins} (of all); "
              f"mean NEES {statistics.fmean(nees) if nees else math.nan:.1f} (6 if the covariance were exact)")
    distractors = [r for r in rows if r.kind == "distractor"]
    wrong = sum(r.est.ok and not correct(r) for r in rows if r.kind != "distractor")
    print(f"[{name}] distractor pairs with a published pose: {sum(r.est.ok for r in distractors)}/{len(distractors)} "
          f"({sum(r.verified for r in distractors)} passed the F check); published poses off by more than "
          f"(25 cm, 2 deg): {wrong}")
    print(f"[{name}] margins, gates off: {margins(rows)}")
    print(f"[{name}] one gate at a time around the defaults (min_inliers {config.min_inliers}, min_inlier_ratio "
          f"{config.min_inlier_ratio:g}, max_rmse {config.max_rmse:g} px), over the gates-off estimates of all pairs:")
    print("    gate                value   right poses  wrong poses  distractor poses")
    base = dict(min_inliers=config.min_inliers, ratio=config.min_inlier_ratio, rmse=config.max_rmse)
    n_pairs = sum(r.kind != "distractor" for r in rows)
    for gate, values in SWEEP.items():
        for value in values:
            gates = {**base, gate: value}
            pub = [r for r in rows if published(r, **gates)]
            right = sum(correct(r) for r in pub)
            wrong_q = sum(r.kind != "distractor" and not correct(r) for r in pub)
            dis = sum(r.kind == "distractor" for r in pub)
            mark = "  <- default" if value == base[gate] else ""
            print(f"    {GATE_NAMES[gate]:17s} {value:7g}   {right:4d}/{n_pairs:<4d}    {wrong_q:6d}"
                  f"       {dis:6d}/{len(distractors)}{mark}")


def margins(rows: list[Row]) -> str:
    """How far the right poses and the false ones (distractors, wrong poses) sit from the gates."""
    def stats(sel: list[Row]) -> str:
        est = [r.relaxed for r in sel if r.relaxed.rotation is not None and r.relaxed.covariance is not None]
        if not est:
            return "none reached PnP"
        ratios = [e.inliers / max(1, e.points) for e in est]
        rmse = [e.rmse_px for e in est]
        return (f"{len(est)} reached PnP, inliers {min(e.inliers for e in est)}..{max(e.inliers for e in est)}, "
                f"ratio {min(ratios):.2f}..{max(ratios):.2f}, RMSE {min(rmse):.2f}..{max(rmse):.2f} px")
    right = [r for r in rows if correct(r)]
    false = [r for r in rows if not correct(r)]
    return f"right poses: {stats(right)}; distractors and wrong poses: {stats(false)}"


def timing(repeats: int, noise_px: float = 0.5, outlier_share: float = 0.05) -> None:
    """estimate_pose on 10 000 matches of a 480x640 pair, against a bare solvePnPRansac."""
    keyframes, queries = ss.relocalization_set(seed=7, n_queries=1, size=(480, 640), photometric=False)
    query = queries[0]
    keyframe = keyframes[query.keyframe]
    rng = np.random.default_rng(0)
    kq, kk = ss.exact_matches(keyframe, query, 10000, rng)
    kq = kq + rng.normal(0, noise_px, kq.shape)
    n_out = int(outlier_share * len(kq))
    kq[:n_out] = rng.uniform((0, 0), (640, 480), (n_out, 2))
    config = PoseConfig()

    def median_ms(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return 1000 * statistics.median(times)

    est = estimate_pose(kq, kk, keyframe.depth, keyframe.camera, query.camera, config)
    z, _ = lookup_depth(keyframe.depth, kk, config.max_depth_spread)
    good = np.isfinite(z)
    obj, img, K = back_project(keyframe.camera, kk[good], z[good]), kq[good], query.camera.matrix()
    pose_ms = median_ms(lambda: estimate_pose(kq, kk, keyframe.depth, keyframe.camera, query.camera, config))
    ransac_ms = median_ms(lambda: cv2.solvePnPRansac(obj, img, K, None, iterationsCount=1000, reprojectionError=2.0,
                                                     confidence=0.999, flags=cv2.SOLVEPNP_SQPNP))
    ess_ms = median_ms(lambda: estimate_pose(kq, kk, None, keyframe.camera, query.camera, config))
    print(f"pose step, {len(kq)} matches (noise {noise_px} px, {outlier_share:.0%} outliers), 480x640, "
          f"median of {repeats}, {os.cpu_count()} CPU cores (load average {os.getloadavg()[0]:.1f}), OpenCV "
          f"{cv2.__version__} with {cv2.getNumThreads()} threads: {est.inliers}/{est.points} inliers, ok={est.ok}")
    print(f"  estimate_pose (PnP)        {pose_ms:7.2f} ms  = {pose_ms / TARGET_MS:.2f} x the {TARGET_MS:g} ms target, "
          f"{pose_ms / ransac_ms:.1f} x a bare solvePnPRansac ({ransac_ms:.2f} ms)")
    print(f"  estimate_pose (essential)  {ess_ms:7.2f} ms  = {ess_ms / TARGET_MS:.2f} x the target")


OLD_CONFIG = PoseConfig(depth_std_a=0.0, depth_std_b=0.0, match_std_px=1e-6, covariance_scale=1.0,
                        effective_points=10**9, multi_keyframe=False)  # main before issue 17: residuals only


def real_set() -> None:
    """The real TUM fr1/rpy pairs (test/data/tum_fr1_rpy), classical matcher, F at 1 px: the old
    covariance (reprojection residuals only, unweighted) beside the new (depth noise + match
    noise, weighted, calibrated inflation), and the distractors through the Relocalizer."""
    from scipy.spatial.transform import Rotation

    from roma_ros.core.transforms import matrix_to_pose
    from roma_ros.localize.geometry import verify_fundamental_subset
    from roma_ros.localize.pipeline import DecisionConfig, Relocalizer
    from roma_ros.mapping import rgbd_benchmark as rb
    from roma_ros.matching.classical import ClassicalMatcher
    from roma_ros.store import Keyframe

    frames = {f.name: f for f in rb.load_frames()}
    camera = rb.camera()
    matcher = ClassicalMatcher()
    feats = {n: matcher.prepare(f.rgb) for n, f in frames.items()}
    pairs = rb.load_pairs()
    data = []
    for kn, qn in pairs:
        m = matcher.match_prepared(feats[qn], [feats[kn]])[0]
        v = verify_fundamental_subset(m.kpts_query, m.kpts_candidate, 5000, method="usac_magsac", threshold=1.0,
                                      confidence=0.999999, max_iters=10000)
        data.append((kn, qn, m.kpts_query[v.inlier_mask], m.kpts_candidate[v.inlier_mask]))
    dist = [np.linalg.norm(rb.relative_pose(frames[k], frames[q])[:3, 3]) for k, q, _, _ in data]
    print(f"\nreal set: TUM RGB-D fr1/rpy (Kinect v1, mocap ground truth), {len(pairs)} pairs "
          f"{min(dist) * 100:.1f}-{max(dist) * 100:.1f} cm apart, classical SIFT, F 1.0 px; "
          f"{len(rb.load_distractors())} distractor views of another room against all keyframes")
    print("  method  poses  recall(5cm,5deg) recall(25cm,5deg)  t_err med  r_err med  posNEES mean/med/max  "
          "rotNEES mean/med  pose ms/query  distractor poses")
    keyframes = [Keyframe(f.name, f"{f.name}.jpg", f.rgb, pose=matrix_to_pose(f.T_world_cam),
                          intrinsics=dict(rb.INTRINSICS), depth=f.depth) for f in frames.values() if f.depth is not None]
    for label, config in (("old", OLD_CONFIG), ("new", PoseConfig())):
        t_err, r_err, p_nees, r_nees, ms, hit5, hit25 = [], [], [], [], [], 0, 0
        for kn, qn, kq, kk in data:
            start = time.perf_counter()
            est = estimate_pose(kq, kk, frames[kn].depth, camera, camera, config)
            ms.append((time.perf_counter() - start) * 1e3)
            if not est.ok:
                continue
            truth = rb.relative_pose(frames[kn], frames[qn])
            e = est.translation - truth[:3, 3]
            d = Rotation.from_matrix(truth[:3, :3] @ est.rotation.T).as_rotvec()
            t_err.append(np.linalg.norm(e))
            r_err.append(math.degrees(np.linalg.norm(d)))
            p_nees.append(e @ np.linalg.solve(est.covariance[:3, :3], e))
            r_nees.append(d @ np.linalg.solve(est.covariance[3:, 3:], d))
            hit5 += t_err[-1] < 0.05 and r_err[-1] < 5
            hit25 += t_err[-1] < 0.25 and r_err[-1] < 5
        reloc = Relocalizer(matcher, DecisionConfig(threshold=1.0, min_inliers=20), config)
        reloc.set_keyframes(keyframes)
        wrong = sum(bool(r.pose and r.pose.ok) for r in (reloc.process(img, camera) for img in rb.load_distractors()))
        n = len(data)
        print(f"  {label:6s} {len(t_err):3d}/{n}   {hit5 / n:6.1%}          {hit25 / n:6.1%}         "
              f"{np.median(t_err) * 100:5.2f} cm  {np.median(r_err):5.2f} deg  "
              f"{np.mean(p_nees):7.1f}/{np.median(p_nees):5.1f}/{np.max(p_nees):6.1f}      "
              f"{np.mean(r_nees):7.1f}/{np.median(r_nees):5.1f}     {np.median(ms):6.2f}        {wrong}")
        if label == "new":
            print(f"  new, position NEES on the even pairs (the inflation was fitted there) "
                  f"{np.mean(p_nees[::2]):.2f}, on the held-out odd pairs {np.mean(p_nees[1::2]):.2f} "
                  f"(3 if honest)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="classical,roma_random", help="comma-separated: classical, roma_random")
    p.add_argument("--queries", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default="480,640", help="image height,width")
    p.add_argument("--timing-repeats", type=int, default=30)
    p.add_argument("--timing-only", action="store_true")
    p.add_argument("--real-only", action="store_true", help="only the real TUM pairs (test/data/tum_fr1_rpy)")
    p.add_argument("--cv-threads", type=int, help="cv2.setNumThreads for the run (default: OpenCV's)")
    args = p.parse_args(argv)
    if args.cv_threads is not None:
        cv2.setNumThreads(args.cv_threads)
    if args.real_only:
        real_set()
        return 0
    if not args.timing_only:
        h, w = (int(v) for v in args.size.split(","))
        start = time.perf_counter()
        keyframes, queries = ss.relocalization_set(seed=args.seed, n_queries=args.queries, size=(h, w))
        others = [ss.render(k.pose, k.camera, (h, w), ss.OTHER_ROOM, name=f"other{i}") for i, k in enumerate(keyframes)]
        far = [(q.keyframe + 2) % len(keyframes) for q in queries]
        pairs = ([(q, keyframes[q.keyframe], "near") for q in queries]
                 + [(q, keyframes[f], "far") for q, f in zip(queries, far)]
                 + [(q, others[q.keyframe], "distractor") for q in queries])
        config = PoseConfig()
        print(f"pose benchmark: synthetic room (synthetic_scene, seed {args.seed}), {len(keyframes)} keyframes with "
              f"exact depth, {len(queries)} queries, each against its own keyframe, a farther one and a view of another room "
              f"(distractor), {w}x{h}; rendered in "
              f"{time.perf_counter() - start:.1f} s; PoseConfig defaults: {config}")
        for name, text, matcher, threshold, kinds in matchers(args.models.split(",")):
            start = time.perf_counter()
            chosen = [p for p in pairs if p[2] in kinds]
            rows = run_matcher(matcher, threshold, chosen, config)
            print(f"\n[{name}] {text} ({time.perf_counter() - start:.0f} s for {len(chosen)} pairs)")
            report(name, rows, config)
            old = run_matcher(matcher, threshold, chosen, OLD_CONFIG)
            for label, rs in (("old covariance", old), ("new covariance", rows)):
                ok = [r for r in rs if r.est.ok and r.kind != "distractor" and math.isfinite(r.nees)]
                nees = [r.nees for r in ok]
                print(f"[{name}] {label}: {len(ok)} poses, 6-DoF NEES mean {np.mean(nees):.1f} median "
                      f"{np.median(nees):.1f} (6 if honest; the scene's depth is exact, so the new model, "
                      f"calibrated on a real sensor, is conservative here)")
        real_set()
        print()
    timing(args.timing_repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
