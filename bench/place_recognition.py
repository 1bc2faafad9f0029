"""Place recognition on real photos: is the right keyframe found, and is a stranger refused?

A set built offline from the photos scikit-image ships (roma_ros.demo.photo_pairs): each place is
one photo, stored once as a keyframe (a mild view of it); the queries show each place under
strong viewpoint, scale and lighting change (viewpoint_homography strength 1.0 plus
photometric_change). Distractor queries are views and crops of photos that are never
stored: the right answer for them is "no match". Every query runs through a Relocalizer
per matcher configuration:

- ``classical``: OpenCV SIFT, RANSAC threshold 1.0 px (SIFT keypoints are less precise);
- ``roma_random``: RoMa outdoor with RANDOM weights at coarse 112, no upsampling: a sanity
  floor that proves the whole path runs; its numbers mean nothing;
- ``roma``: RoMa outdoor with its real weights, only when both checkpoints are in the torch
  hub cache (nothing is downloaded); otherwise the output says it was skipped.

Reported per configuration: recall@1 (the best candidate is the right keyframe, accepted or
not), precision and recall of accepted matches, the rate of accepted distractors, mean
latency per query and, with a shortlist (RoMa), shortlist recall@top_k. For classical (and
real RoMa) a min_inliers sweep reuses each query's best candidate (no re-running) and names
the smallest min_inliers that accepts no distractor at the highest recall: how the
documented defaults are chosen.

    .venv/bin/python bench/place_recognition.py                       # CPU, ~5 min
    .venv/bin/python bench/place_recognition.py --models classical --views 5 --out pr.json
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from roma_ros.core.imageio import save_json
from roma_ros.matching import MatcherConfig, build_matcher
from roma_ros.matching.weights import checkpoints_for
from roma_ros.localize.pipeline import DecisionConfig, QueryResult, Relocalizer
from roma_ros.store import Keyframe
from roma_ros.demo.photo_pairs import load_photo, viewpoint_homography, warp_pair

IMAGE_SIZE = (480, 640)  # (height, width) of every keyframe and query
PLACES = ("astronaut", "coffee", "chelsea", "rocket", "camera", "brick")
DISTRACTORS = ("grass", "gravel")  # never stored
KEYFRAME_STRENGTH = 0.3  # the stored view: mildly off the photo
QUERY_STRENGTH = 1.0  # the query views: strong perspective, rotation, scale
SWEEP = (5, 10, 15, 20, 25, 30, 40, 50, 75, 100)
CONFIG_NAMES = ("classical", "roma_random", "roma")


# ------------------------------------------------------------------------------ data

@dataclass
class Query:
    name: str
    image: np.ndarray
    expected: int | None  # keyframe index; None for a distractor


def resized(image: np.ndarray, size: tuple[int, int] = IMAGE_SIZE) -> np.ndarray:
    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def random_crop(image: np.ndarray, rng: np.random.Generator, low: float = 0.5, high: float = 0.75) -> np.ndarray:
    """A crop covering ``low``..``high`` of each side, at a random place."""
    h, w = image.shape[:2]
    ch, cw = int(h * rng.uniform(low, high)), int(w * rng.uniform(low, high))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return image[y:y + ch, x:x + cw]


def view(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """``image`` seen from another viewpoint, with other exposure and sensor noise."""
    H = viewpoint_homography(image.shape, rng, strength=strength)
    return warp_pair(image, H, photometric=True, rng=rng)[0]


def build_set(views: int, seed: int) -> tuple[list[Keyframe], list[Query]]:
    """Keyframes (one per place) and queries: ``views`` per place, ``views`` per distractor photo
    (the whole photo first, then random crops of it)."""
    rng = np.random.default_rng(seed)
    keyframes, queries = [], []
    for index, name in enumerate(PLACES):
        base = resized(load_photo(name))
        keyframes.append(Keyframe(name=name, image_file=f"{name}.png", image=view(base, KEYFRAME_STRENGTH, rng)))
        queries += [Query(f"{name}_{v}", view(base, QUERY_STRENGTH, rng), index) for v in range(views)]
    for name in DISTRACTORS:
        photo = load_photo(name)
        for v in range(views):
            source = photo if v == 0 else random_crop(photo, rng)
            queries.append(Query(f"{name}_{'full' if v == 0 else f'crop{v}'}", view(resized(source), QUERY_STRENGTH, rng),
                                 None))
    return keyframes, queries


# ------------------------------------------------------------------------------ configurations

@dataclass
class Setup:
    name: str
    matcher: MatcherConfig
    decision: DecisionConfig
    note: str


def real_roma_missing() -> list[str]:
    """Checkpoints of roma_outdoor that are not in the torch hub cache."""
    return [str(c.cache_path) for c in checkpoints_for("roma_outdoor") if not c.cache_path.is_file()]


def setups(args) -> tuple[list[Setup], list[str]]:
    """The configurations to run, and a line for each one skipped."""
    gpu = args.device.startswith("cuda")
    chosen, skipped = [], []
    for name in args.models.split(","):
        name = name.strip()
        if name == "classical":
            chosen.append(Setup(name, MatcherConfig(model="classical"),
                                DecisionConfig(threshold=1.0, min_inliers=args.classical_min_inliers, top_k=0),
                                "OpenCV SIFT, ratio test + mutual check"))
            if args.classical_top_k:
                chosen.append(Setup("classical_vlad", MatcherConfig(model="classical"),
                                    DecisionConfig(threshold=1.0, min_inliers=args.classical_min_inliers,
                                                   top_k=args.classical_top_k),
                                    "OpenCV SIFT, shortlist by VLAD over a vocabulary from the map"))
        elif name == "roma_random":
            chosen.append(Setup(name, MatcherConfig(
                model="roma_outdoor", device=args.device, random_weights=True, coarse_res=112, upsample_res=0,
                num_samples=args.num_samples),
                DecisionConfig(threshold=0.2, min_inliers=50, top_k=args.top_k),
                "RoMa outdoor, RANDOM weights, coarse 112, no upsampling: sanity floor, numbers meaningless"))
        elif name == "roma":
            missing = real_roma_missing()
            if missing:
                skipped.append(f"roma (real weights): SKIPPED, not in the torch hub cache: {', '.join(missing)}")
                continue
            coarse, upsample = (560, 864) if gpu else (280, 0)
            chosen.append(Setup(name, MatcherConfig(
                model="roma_outdoor", device=args.device, allow_download=False, coarse_res=coarse,
                upsample_res=upsample, num_samples=args.num_samples),
                DecisionConfig(threshold=0.2, min_inliers=50, top_k=args.top_k),
                f"RoMa outdoor, REAL weights, coarse {coarse}, upsample {upsample or 'off'}"))
        else:
            raise SystemExit(f"unknown configuration '{name}': choose from {', '.join(CONFIG_NAMES)}")
    return chosen, skipped


# ------------------------------------------------------------------------------ running

@dataclass
class Outcome:
    """One query's result, reduced to what the metrics and the sweep need."""

    query: str
    expected: int | None
    best: int | None  # None: no candidate says anything (0 inliers and no shortlist ranking)
    verified: bool
    inliers: int
    overlap: float | None
    accepted: bool
    reason: str
    shortlist: list[int]
    candidate_inliers: dict[int, int]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def right(self) -> bool:
        return self.expected is not None and self.best == self.expected


def outcome(query: Query, result: QueryResult) -> Outcome:
    best = result.best
    # Without a shortlist ranking, ties at zero inliers go to keyframe 0 by list order: no answer.
    says = best is not None and (best.inliers > 0 or best.similarity is not None)
    return Outcome(
        query=query.name, expected=query.expected, best=best.index if says else None,
        verified=bool(best and best.verification.verified), inliers=best.inliers if best else 0,
        overlap=best.matches.overlap if best else None, accepted=result.accepted, reason=result.reason,
        shortlist=[c.index for c in result.candidates],
        candidate_inliers={c.index: c.inliers for c in result.candidates}, timings=dict(result.timings))


def run_setup(setup: Setup, keyframes: list[Keyframe], queries: list[Query]) -> tuple[list[Outcome], float]:
    """Every query through one Relocalizer; returns the outcomes and the keyframe preparation time."""
    matcher = build_matcher(setup.matcher)
    reloc = Relocalizer(matcher, setup.decision)
    start = time.perf_counter()
    reloc.set_keyframes(keyframes)
    prepare_s = time.perf_counter() - start
    reloc.process(queries[0].image)  # warm-up: first-call allocations are not a query's cost
    return [outcome(q, reloc.process(q.image)) for q in queries], prepare_s


def accepted_at(o: Outcome, min_inliers: int, min_overlap: float = 0.0) -> bool:
    """pipeline.decide() on the best candidate, for another min_inliers."""
    if not o.verified or o.inliers < max(min_inliers, 1):
        return False
    return o.overlap is None or o.overlap >= min_overlap


def rates(outcomes: list[Outcome], accepted: list[bool]) -> dict[str, float]:
    places = [i for i, o in enumerate(outcomes) if o.expected is not None]
    strangers = [i for i, o in enumerate(outcomes) if o.expected is None]
    n_accepted = sum(accepted)
    good = sum(1 for i in places if accepted[i] and outcomes[i].right)
    return {
        "precision": good / n_accepted if n_accepted else float("nan"),
        "recall": good / len(places) if places else float("nan"),
        "distractor_accept": sum(accepted[i] for i in strangers) / len(strangers) if strangers else float("nan"),
        "wrong_place_accept": sum(1 for i in places if accepted[i] and not outcomes[i].right),
    }


def summary(outcomes: list[Outcome], top_k: int, uses_shortlist: bool) -> dict[str, float]:
    places = [o for o in outcomes if o.expected is not None]
    out = {"recall_at_1": sum(o.right for o in places) / len(places),
           **rates(outcomes, [o.accepted for o in outcomes]),
           "latency_ms": 1000 * float(np.mean([sum(o.timings.values()) for o in outcomes]))}
    for stage in ("encode", "shortlist", "match", "verify"):
        out[f"{stage}_ms"] = 1000 * float(np.mean([o.timings.get(stage, 0.0) for o in outcomes]))
    if uses_shortlist:
        out["shortlist_recall"] = sum(o.expected in o.shortlist for o in places) / len(places)
        out["top_k"] = top_k
    return out


def sweep(outcomes: list[Outcome], min_overlap: float) -> list[dict[str, float]]:
    rows = []
    for m in SWEEP:
        rows.append({"min_inliers": m, **rates(outcomes, [accepted_at(o, m, min_overlap) for o in outcomes])})
    return rows


def choose(rows: list[dict[str, float]]) -> dict[str, float] | None:
    """The smallest min_inliers with no accepted distractor (and no wrong place) at the highest recall."""
    safe = [r for r in rows if r["distractor_accept"] == 0 and r["wrong_place_accept"] == 0]
    if not safe:
        return None
    best = max(r["recall"] for r in safe)
    return min((r for r in safe if r["recall"] == best), key=lambda r: r["min_inliers"])


# ------------------------------------------------------------------------------ printing

def pct(x: float) -> str:
    return "  n/a" if math.isnan(x) else f"{100 * x:5.1f}%"


def print_queries(outcomes: list[Outcome], names: list[str]) -> None:
    print(f"  {'query':<16} {'expected':<10} {'best':<10} {'inliers':>7} {'overlap':>7} {'accepted':>8} "
          f"{'right':>5} {'shortlist':<14} {'ms':>7}")
    for o in outcomes:
        expected = names[o.expected] if o.expected is not None else "none"
        best = names[o.best] if o.best is not None else "-"
        ok = o.right if o.expected is not None else not o.accepted
        overlap = "-" if o.overlap is None else f"{o.overlap:.3f}"
        print(f"  {o.query:<16} {expected:<10} {best:<10} {o.inliers:>7} {overlap:>7} "
              f"{'yes' if o.accepted else 'no':>8} {'yes' if ok else 'NO':>5} "
              f"{','.join(map(str, o.shortlist)):<14} {1000 * sum(o.timings.values()):>7.0f}")


def print_sweep(name: str, outcomes: list[Outcome], rows: list[dict[str, float]]) -> dict | None:
    right = sorted(o.inliers for o in outcomes if o.right)
    stranger = sorted(o.inliers for o in outcomes if o.expected is None)
    wrong = sorted(o.inliers for o in outcomes if o.expected is not None and not o.right)
    print(f"\nmin_inliers sweep for {name} (best candidate per query, collected once):")
    print(f"  best-candidate inliers: right places {right}")
    print(f"                          distractors  {stranger}")
    print(f"                          wrong places {wrong}")
    print(f"  {'min_inliers':>11} {'precision':>9} {'recall':>7} {'distractors accepted':>21} {'wrong places accepted':>22}")
    for r in rows:
        print(f"  {r['min_inliers']:>11} {pct(r['precision']):>9} {pct(r['recall']):>7} "
              f"{pct(r['distractor_accept']):>21} {r['wrong_place_accept']:>22}")
    chosen = choose(rows)
    worst = max(stranger + [o.inliers for o in outcomes if o.expected is not None and not o.right], default=0)
    if chosen is None:
        print(f"  => no min_inliers in {list(SWEEP)} keeps every distractor and wrong place out")
    else:
        plateau = [r["min_inliers"] for r in rows if r["distractor_accept"] == 0 and r["wrong_place_accept"] == 0
                   and r["recall"] == chosen["recall"]]
        print(f"  => min_inliers {chosen['min_inliers']}: no distractor or wrong place accepted, recall "
              f"{pct(chosen['recall']).strip()}, precision {pct(chosen['precision']).strip()} "
              f"(most inliers of a distractor or wrong place: {worst}; fewest of a right place: "
              f"{right[0] if right else '-'}; the same holds for {', '.join(map(str, plateau))})")
    return chosen


def json_safe(value):
    """NaN (a rate with nothing to count) as null, so the file is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(CONFIG_NAMES),
                        help=f"comma-separated, from {', '.join(CONFIG_NAMES)} (roma runs only with cached weights)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--views", type=int, default=3, help="query views per place and per distractor photo")
    parser.add_argument("--device", default="cpu", help="RoMa device: cpu, cuda, cuda:N")
    parser.add_argument("--top-k", type=int, default=3, help="RoMa shortlist size (0 = all keyframes)")
    parser.add_argument("--num-samples", type=int, default=5000, help="RoMa correspondences per keyframe")
    parser.add_argument("--classical-min-inliers", type=int, default=20, help="classical's min_inliers for the run")
    parser.add_argument("--classical-top-k", type=int, default=3,
                        help="also run classical with its VLAD shortlist of this size (0: only all keyframes)")
    parser.add_argument("--out", default="", help="write every per-query result to this JSON file")
    args = parser.parse_args()
    if args.views < 1:
        parser.error("--views must be >= 1")

    if not args.device.startswith("cuda"):
        import torch

        torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

    started = time.perf_counter()
    keyframes, queries = build_set(args.views, args.seed)
    names = [k.name for k in keyframes]
    n_places = sum(q.expected is not None for q in queries)
    print(f"place recognition: {len(keyframes)} keyframes ({', '.join(names)}), {n_places} place queries "
          f"({args.views} per place, strength {QUERY_STRENGTH} + photometric), {len(queries) - n_places} distractor "
          f"queries ({', '.join(DISTRACTORS)}: whole photo and crops, never stored), {IMAGE_SIZE[1]}x{IMAGE_SIZE[0]}, "
          f"seed {args.seed}, device {args.device}")
    chosen_setups, skipped = setups(args)
    for setup in chosen_setups:
        print(f"  runs:    {setup.name}: {setup.note}; threshold {setup.decision.threshold} px, min_inliers "
              f"{setup.decision.min_inliers}, top_k {setup.decision.top_k or 'all'}")
    for line in skipped:
        print(f"  skipped: {line}")

    report: dict = {"keyframes": names, "seed": args.seed, "views": args.views, "skipped": skipped, "configs": {}}
    table = []
    for setup in chosen_setups:
        t0 = time.perf_counter()
        outcomes, prepare_s = run_setup(setup, keyframes, queries)
        shortlisted = setup.decision.top_k > 0
        stats = summary(outcomes, setup.decision.top_k, shortlisted)
        print(f"\n[{setup.name}] {setup.note} (keyframes prepared in {prepare_s:.1f} s, "
              f"all queries {time.perf_counter() - t0:.0f} s)")
        print_queries(outcomes, names)
        entry = {"note": setup.note, "decision": vars(setup.decision), "summary": stats,
                 "prepare_s": prepare_s, "queries": [vars(o) | {"right": o.right} for o in outcomes]}
        if setup.name != "roma_random":  # random weights: a sweep would choose from noise
            rows = sweep(outcomes, setup.decision.min_overlap)
            entry["sweep"] = rows
            entry["chosen_min_inliers"] = print_sweep(setup.name, outcomes, rows)
        report["configs"][setup.name] = entry
        table.append((setup, stats))

    print("\nsummary (recall@1: best candidate right, accepted or not; precision / recall: of accepted matches)")
    print(f"  {'config':<12} {'recall@1':>8} {'precision':>9} {'recall':>7} {'distractors acc.':>16} "
          f"{'shortlist recall@k':>18} {'ms/query':>8} {'(encode':>7} {'shortlist':>9} {'match':>6} {'verify)':>7}")
    for setup, s in table:
        short = f"{pct(s['shortlist_recall'])} @{s['top_k']}" if "shortlist_recall" in s else "n/a (all)"
        print(f"  {setup.name:<12} {pct(s['recall_at_1']):>8} {pct(s['precision']):>9} {pct(s['recall']):>7} "
              f"{pct(s['distractor_accept']):>16} {short:>18} {s['latency_ms']:>8.0f} {s['encode_ms']:>7.0f} "
              f"{s['shortlist_ms']:>9.1f} {s['match_ms']:>6.0f} {s['verify_ms']:>7.0f}")
    for line in skipped:
        print(f"  {line}")
    if any(s.name == "roma_random" for s, _ in table):
        print("  roma_random has random weights: it proves the path runs; its accuracy numbers mean nothing.")
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.out:
        print(f"wrote {save_json(args.out, json_safe(report))}")


if __name__ == "__main__":
    sys.exit(main())
