"""Query latency and memory against the number of keyframes, with the shortlist on and off.

RoMa outdoor with random weights (same arithmetic, time and memory as the real model; the
matches mean nothing) at coarse 112, no upsampling, 2000 samples per keyframe. Keyframes are
synthetic variety from the scikit-image photos (random crops, viewpoint warps and lighting),
so their DINOv2 descriptors differ. They are prepared ONCE, for the largest N, with the
matcher's own ``prepare`` (what the node does at load time): the preparation time and the
bytes kept per keyframe are reported. Each N then uses the first N of them, and queries (other
views of the photos) are timed through a Relocalizer with top_k 5 (shortlist on) and top_k 0
(every keyframe decoded). Shortlist off is measured up to --off-max keyframes; beyond it the
latency is extrapolated linearly from the measured per-keyframe cost, and the output says so.

    .venv/bin/python bench/scale.py                     # CPU, ~8 min
    .venv/bin/python bench/scale.py --device cuda --off-max 1000
    .venv/bin/python bench/scale.py store --ns 1000,10000,100000   # the keyframe store (store_scale.py)
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import _rss_bytes, measure  # noqa: E402
from place_recognition import random_crop, resized, view  # noqa: E402

from roma_ros.matching import MatcherConfig  # noqa: E402
from roma_ros.matching.device import resolve_device  # noqa: E402
from roma_ros.matching.roma import EncodedImage, RomaMatcher  # noqa: E402
from roma_ros.localize.pipeline import DecisionConfig, QueryResult, Relocalizer  # noqa: E402
from roma_ros.store import Keyframe  # noqa: E402
from roma_ros.demo.photo_pairs import PHOTO_NAMES, load_photo  # noqa: E402

STAGES = ("encode", "shortlist", "match", "verify")


class PreparedOnce:
    """The matcher, except that ``prepare`` of a keyframe image prepared earlier returns its
    stored encoding: every N reuses the features computed once for the largest N."""

    def __init__(self, matcher: RomaMatcher, prepared: dict[int, EncodedImage]) -> None:
        self._matcher = matcher
        self._prepared = prepared  # id(keyframe image) -> encoding; the keyframes keep the images alive

    def prepare(self, image: np.ndarray) -> EncodedImage:
        found = self._prepared.get(id(image))
        return found if found is not None else self._matcher.prepare(image)

    def __getattr__(self, name: str):
        return getattr(self._matcher, name)


def tensor_bytes(encoded: EncodedImage) -> tuple[int, int]:
    """(all tensors of a prepared keyframe, its DINOv2 part) in bytes."""
    tensors = [*encoded.coarse.values(), *(encoded.fine or {}).values()]
    if encoded.ready is not None:
        tensors += [*encoded.ready[0].values(), *(encoded.ready[1] or {}).values()]
    total = sum(t.nelement() * t.element_size() for t in tensors if t is not None)
    return total, encoded.dino.nelement() * encoded.dino.element_size()


def keyframe_images(count: int, size: tuple[int, int], rng: np.random.Generator) -> list[np.ndarray]:
    """Random crops (35-100 % of each side) of the photos, each seen from a random viewpoint."""
    photos = [load_photo(name) for name in PHOTO_NAMES]
    return [view(resized(random_crop(photos[i % len(photos)], rng, 0.35, 1.0), size), 0.6, rng)
            for i in range(count)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def release_freed_memory() -> None:
    """Hand memory freed by earlier queries back to the OS (glibc keeps it otherwise), so each
    query's peak RSS is measured from a clean baseline."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def run_queries(reloc: Relocalizer, queries: list[np.ndarray], device: str) -> dict[str, float]:
    """Mean seconds per stage over the queries, and the largest peak memory above the start."""
    stage_times: dict[str, list[float]] = {s: [] for s in STAGES}
    totals, peaks = [], []
    for query in queries:
        sync(device)
        release_freed_memory()
        result, seconds, peak = measure(lambda q=query: reloc.process(q), device)
        assert isinstance(result, QueryResult) and result.best is not None, result
        for stage in STAGES:
            stage_times[stage].append(result.timings.get(stage, 0.0))
        totals.append(seconds)
        peaks.append(peak)
    out = {s: statistics.mean(v) for s, v in stage_times.items()}
    out.update(total=statistics.mean(totals), peak=max(peaks), candidates=len(result.candidates))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, auto")
    parser.add_argument("--ns", default="10,100,1000", help="keyframe counts")
    parser.add_argument("--top-k", type=int, default=5, help="shortlist size when on")
    parser.add_argument("--off-max", type=int, default=100,
                        help="largest N measured with the shortlist off; larger N are extrapolated")
    parser.add_argument("--queries", type=int, default=3, help="queries timed per setting (mean)")
    parser.add_argument("--coarse", type=int, default=112)
    parser.add_argument("--upsample", type=int, default=0)
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", default="240x320", help="keyframe and query images, HxW")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ns = sorted({int(n) for n in args.ns.split(",")})
    size = tuple(int(v) for v in args.size.lower().split("x"))
    device = resolve_device(args.device)
    if not device.startswith("cuda"):
        torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    started = time.perf_counter()

    matcher = RomaMatcher(MatcherConfig(
        model="roma_outdoor", device=device, random_weights=True, coarse_res=args.coarse,
        upsample_res=args.upsample, num_samples=args.num_samples, batch_size=args.batch_size))
    rng = np.random.default_rng(args.seed)
    images = keyframe_images(max(ns), size, rng)
    keyframes = [Keyframe(name=f"kf{i:04d}", image_file=f"kf{i:04d}.png", image=image)
                 for i, image in enumerate(images)]
    queries = [view(resized(load_photo(PHOTO_NAMES[i % len(PHOTO_NAMES)]), size), 1.0, rng)
               for i in range(args.queries)]
    print(f"scale: RoMa outdoor, RANDOM weights, device {device} "
          f"({torch.cuda.get_device_name() if device.startswith('cuda') else f'{torch.get_num_threads()} threads'}), "
          f"coarse {args.coarse}, upsample {args.upsample or 'off'}, {args.num_samples} samples, batch "
          f"{args.batch_size}, images {size[1]}x{size[0]}, {args.queries} queries per setting (mean)")

    # ---- prepare once, for the largest N
    rss_before = _rss_bytes()
    prepared: dict[int, EncodedImage] = {}
    matcher.prepare(keyframes[0].image)  # warm-up
    sync(device)
    start = time.perf_counter()
    for keyframe in keyframes:
        prepared[id(keyframe.image)] = matcher.prepare(keyframe.image)
    sync(device)
    prepare_s = (time.perf_counter() - start) / len(keyframes)
    rss_kept = (_rss_bytes() - rss_before) / len(keyframes)
    total_bytes, dino_bytes = tensor_bytes(next(iter(prepared.values())))
    print(f"prepared {len(keyframes)} keyframes once: {1000 * prepare_s:.0f} ms per keyframe; kept per keyframe: "
          f"DINOv2 {dino_bytes / 1024:.0f} KiB, all EncodedImage tensors {total_bytes / 1024:.0f} KiB, RGB image "
          f"{images[0].nbytes / 1024:.0f} KiB; RSS grew {rss_kept / 1024:.0f} KiB per keyframe")

    # ---- queries against the first N
    lookup = PreparedOnce(matcher, prepared)
    rows: dict[tuple[int, int], dict[str, float]] = {}
    warm = Relocalizer(lookup, DecisionConfig(top_k=args.top_k))
    warm.set_keyframes(keyframes[:ns[0]])
    warm.process(queries[0])  # warm-up
    for n in ns:
        for top_k in (args.top_k, 0):
            if top_k == 0 and n > args.off_max:
                continue
            reloc = Relocalizer(lookup, DecisionConfig(top_k=top_k))
            reloc.set_keyframes(keyframes[:n])
            rows[(n, top_k)] = run_queries(reloc, queries, device)
            r = rows[(n, top_k)]
            print(f"  measured N={n} top_k={top_k or 'all'}: {1000 * r['total']:.0f} ms/query "
                  f"({time.perf_counter() - started:.0f} s so far)", flush=True)

    # ---- shortlist off beyond --off-max: linear in N from the measured per-keyframe cost
    measured_off = sorted(n for (n, k) in rows if k == 0)
    extrapolated = set()
    per_kf = float("nan")
    if len(measured_off) >= 2:
        lo, hi = rows[(measured_off[0], 0)], rows[(measured_off[-1], 0)]
        span = measured_off[-1] - measured_off[0]
        per_kf = (hi["total"] - lo["total"]) / span
        for n in ns:
            if (n, 0) in rows:
                continue
            # Stages that work per keyframe grow linearly; the query's encoding does not depend on N.
            row = {key: hi[key] + (hi[key] - lo[key]) * (n - measured_off[-1]) / span
                   for key in ("shortlist", "match", "verify")}
            row["encode"] = (hi["encode"] + lo["encode"]) / 2
            row["total"] = hi["total"] + per_kf * (n - measured_off[-1])
            rows[(n, 0)] = {**row, "peak": float("nan"), "candidates": n}
            extrapolated.add(n)

    print(f"\n{'N':>5} {'top_k':>5} {'ms/query':>9} {'encode':>7} {'shortlist':>9} {'match':>7} {'verify':>7} "
          f"{'decoded':>7} {'peak RSS MB':>11}")
    for n in ns:
        for top_k in (args.top_k, 0):
            if (n, top_k) not in rows:
                continue
            r = rows[(n, top_k)]
            peak = "n/a" if math.isnan(r["peak"]) else f"{r['peak'] / 2**20:.0f}"
            note = "  extrapolated" if n in extrapolated and top_k == 0 else ""
            print(f"{n:>5} {top_k or 'all':>5} {1000 * r['total']:>9.0f} {1000 * r['encode']:>7.0f} "
                  f"{1000 * r['shortlist']:>9.2f} {1000 * r['match']:>7.0f} {1000 * r['verify']:>7.0f} "
                  f"{r['candidates']:>7} {peak:>11}{note}")
    print("ms/query: wall time of Relocalizer.process; stages from QueryResult.timings; decoded: keyframes matched; "
          "peak RSS MB: largest over the queries, above the RSS at the start of the query (keyframes loaded, freed "
          "memory returned with malloc_trim first)")
    if extrapolated:
        print(f"shortlist off at N={', '.join(map(str, sorted(extrapolated)))} is EXTRAPOLATED (not measured): "
              f"linear from N={measured_off[0]} and N={measured_off[-1]}, {1000 * per_kf:.0f} ms per keyframe")
    small, large = ns[0], ns[-1]
    for top_k, label in ((args.top_k, f"shortlist on (top_k {args.top_k})"), (0, "shortlist off (all)")):
        if (small, top_k) in rows and (large, top_k) in rows:
            ratio = rows[(large, top_k)]["total"] / rows[(small, top_k)]["total"]
            how = " (extrapolated)" if large in extrapolated and top_k == 0 else ""
            print(f"latency growth N={large} vs N={small}, {label}: {ratio:.2f}x{how}")
    if (large, args.top_k) in rows and (large, 0) in rows:
        print(f"at N={large} the shortlist answers {rows[(large, 0)]['total'] / rows[(large, args.top_k)]['total']:.0f}x "
              f"faster than decoding every keyframe")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    if sys.argv[1:2] == ["store"]:
        from store_scale import main as store_main

        store_main(sys.argv[2:])
    else:
        main()
