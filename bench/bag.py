"""Importing a recording as a map, and evaluating a second one: the time per frame of each stage.

Two rosbag2 recordings of the synthetic room (test/bagutil.py: rendered images, exact 16-bit
depth, camera_info, poses on /tf only, so every pose is a TF chain lookup with interpolation):
a map run and a query run from other viewpoints, each ``--frames`` frames at 10 Hz. Then

- ``roma-keyframes import-bag``'s stages (mapping/importer.py): scan (pass 1: every message read,
  poses interpolated, depth paired), select (keyframing.py on all frames), decode (pass 2: the
  chosen frames' image and depth decoded) and write (KeyframeStore.add: PNG image and depth,
  index rewrite, fsyncs), per frame of the recording and per keyframe written;
- with ``--dense``, the same import with nearly every frame a keyframe: what one ``KeyframeStore.add``
  costs as the index grows (it rewrites keyframes.yaml each time);
- the feature cache's cost per keyframe, the reference the import must stay well under: RoMa
  outdoor with random weights at coarse 112 (the smallest the tests use; real settings cost
  more), ``FeatureCache.prepare`` on keyframes of the map (``--no-roma`` skips it);
- ``roma-eval`` on the first ``--queries`` frames of the query run with the classical matcher
  (mapping/evaluate.py): the Relocalizer's stages per query, and the evaluation's own overhead
  (bag reading and decoding, map composition, errors) as what is left of the wall clock.

    PYTHONPATH=$PWD .venv/bin/python bench/bag.py --dense         # ~4 min on 2 CPU cores (as in results/)
    PYTHONPATH=$PWD .venv/bin/python bench/bag.py                 # ~1.5 min
    PYTHONPATH=$PWD .venv/bin/python bench/bag.py --frames 200 --queries 20 --no-roma
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))

from bagutil import MAP_WAYPOINTS, NS, QUERY_WAYPOINTS, START_NS, camera_run, write_bag  # noqa: E402

from roma_ros.localize.pipeline import DecisionConfig, Relocalizer  # noqa: E402
from roma_ros.mapping.bag import PoseSource  # noqa: E402
from roma_ros.mapping.evaluate import bag_queries, evaluate, summarize, summary_text  # noqa: E402
from roma_ros.mapping.importer import import_bag  # noqa: E402
from roma_ros.mapping.keyframing import KeyframeRule  # noqa: E402
from roma_ros.matching.base import MatcherConfig  # noqa: E402
from roma_ros.matching.registry import build_matcher  # noqa: E402
from roma_ros.store import KeyframeStore  # noqa: E402

TF = PoseSource(tf_from="map", tf_to="camera_optical_frame")


def loop(waypoints: list) -> list:
    """Out and back twice: revisits, where selecting against every keyframe matters."""
    return waypoints + waypoints[-2::-1] + waypoints[1:] + waypoints[-2::-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=1000)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--size", type=int, nargs=2, default=(120, 160), metavar=("H", "W"))
    p.add_argument("--no-roma", action="store_true", help="skip the feature-cache reference (RoMa, ~16 s, 4 GB)")
    p.add_argument("--dense", action="store_true", help="also import with nearly every frame a keyframe")
    args = p.parse_args()
    size = tuple(args.size)
    lines = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    with tempfile.TemporaryDirectory(prefix="bench-bag-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        map_bag = write_bag(root / "map", camera_run(loop(MAP_WAYPOINTS), args.frames), poses="tf", size=size)
        query_bag = write_bag(root / "queries", camera_run(loop(QUERY_WAYPOINTS), args.frames,
                                                           start_ns=START_NS + 1000 * NS), poses="tf", size=size,
                              depth=None, storage="mcap")
        megabytes = sum(f.stat().st_size for f in map_bag.iterdir()) / 1e6
        say(f"bag benchmark: 2 recordings of {args.frames} frames at {size[1]}x{size[0]} (rgb8, 16UC1 depth, "
            f"camera_info, /tf + /tf_static), map bag {megabytes:.0f} MB sqlite3, query bag MCAP; written in "
            f"{time.perf_counter() - start:.1f} s")

        start = time.perf_counter()
        summary = import_bag(map_bag, root / "store", "/camera/image", TF, "/camera/depth", "/camera/camera_info")
        wall = time.perf_counter() - start
        n, k = summary.frames, summary.keyframes_written
        say("")
        say(f"import-bag: {k} keyframes from {n} frames in {wall:.2f} s ({wall / n * 1e3:.2f} ms per frame)")
        for line in summary.lines():
            say(f"  {line}")
        say(f"  {'stage':<8} {'total s':>8} {'ms/frame':>9} {'ms/keyframe':>12}")
        for stage, seconds in summary.timings.items():
            say(f"  {stage:<8} {seconds:8.3f} {seconds / n * 1e3:9.3f} {seconds / max(k, 1) * 1e3:12.2f}")
        select_write = summary.timings["select"] + summary.timings["write"]
        say(f"  selection + writing: {select_write / max(k, 1) * 1e3:.2f} ms per keyframe written "
            f"({summary.timings['select'] / n * 1e6:.1f} us per frame for the selection)")

        if args.dense:
            # Nearly every frame a keyframe: the store's per-add cost as the index grows (each add
            # rewrites keyframes.yaml), first and last tenth of the additions.
            times = []

            def timed(stream, total):
                for item in stream:
                    times.append(time.perf_counter())
                    yield item

            dense = import_bag(map_bag, root / "dense", "/camera/image", TF, "/camera/depth", "/camera/camera_info",
                               KeyframeRule(min_distance=0.02, min_angle_deg=1.0, max_interval_s=0.0), progress=timed)
            steps = np.diff(times)
            tenth = max(1, len(steps) // 10)
            say("")
            say(f"dense import (min_distance 0.02 m, min_angle 1 deg): {dense.keyframes_written} keyframes, write "
                f"{dense.timings['write'] / dense.keyframes_written * 1e3:.1f} ms per keyframe on average; per "
                f"keyframe (decode + write) over the first tenth {np.mean(steps[:tenth]) * 1e3:.1f} ms, the last "
                f"tenth {np.mean(steps[-tenth:]) * 1e3:.1f} ms")

        keyframes = KeyframeStore(root / "store").load()
        if not args.no_roma:
            from roma_ros.store.cache import cache_for

            config = MatcherConfig(model="roma_outdoor", device="cpu", coarse_res=112, upsample_res=0,
                                   random_weights=True, allow_download=False)
            start = time.perf_counter()
            roma = build_matcher(config)
            built = time.perf_counter() - start
            cache = cache_for(roma, root / "store")
            sample = keyframes[:5]
            start = time.perf_counter()
            for keyframe in sample:
                cache.prepare(roma, keyframe.image_file, keyframe.image)
            per_keyframe = (time.perf_counter() - start) / len(sample)
            say("")
            say(f"feature cache (RoMa outdoor, random weights, coarse 112, CPU; built in {built:.0f} s): "
                f"{per_keyframe * 1e3:.0f} ms per keyframe ({len(sample)} keyframes)")
            say(f"  import's selection + writing per keyframe / feature cache per keyframe = "
                f"{select_write / max(k, 1) / per_keyframe:.3f}")
            del roma, cache

        relocalizer = Relocalizer(build_matcher(MatcherConfig(model="classical")), DecisionConfig(threshold=1.0))
        relocalizer.set_keyframes(keyframes)
        start = time.perf_counter()
        count, queries = bag_queries(query_bag, "/camera/image", TF, "/camera/camera_info")
        scanned = time.perf_counter() - start
        start = time.perf_counter()
        records = list(evaluate(relocalizer, queries, args.queries))
        wall = time.perf_counter() - start
        m = len(records)
        say("")
        say(f"roma-eval: {m} of {count} queries, classical matcher (F threshold 1.0 px), {len(keyframes)} keyframes, "
            f"in {wall:.1f} s ({wall / m * 1e3:.1f} ms per query); scan of the query bag {scanned:.2f} s "
            f"({scanned / count * 1e3:.2f} ms per frame)")
        stages = sorted({s for r in records for s in r.timings})
        for stage in stages:
            values = np.array([r.timings.get(stage, 0.0) for r in records])
            say(f"  {stage:<10} median {np.median(values) * 1e3:8.2f} ms   mean {values.mean() * 1e3:8.2f} ms")
        overhead = wall - sum(r.latency_s for r in records)
        say(f"  evaluation overhead (reading + decoding the image, errors): {overhead / m * 1e3:.2f} ms per query")
        for line in summary_text(summarize(records)).splitlines():
            say(f"  {line}")

    out = Path(__file__).resolve().parent / "results" / "bag-cpu.txt"
    out.write_text("\n".join(lines) + "\n")
    print(f"\nsaved {out}")


if __name__ == "__main__":
    main()
