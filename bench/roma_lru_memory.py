"""RoMa's held feature memory against the map's size, with the feature LRU (issue 19).

The REAL RoMa architecture (roma_outdoor) with RANDOM weights at a small coarse resolution,
on the CPU: the tensors it keeps per keyframe have the shapes and dtypes of the real model's
at that resolution, so counting the tensors the process holds shows what the GPU would hold.
For each N, a folder of N keyframes is made (one photo written N times; its features computed
ONCE and written to the feature cache for every keyframe; SYNTHETIC random unit descriptors
stored in the index, so the shortlists differ between queries). The node's path follows: a
lazy load, ``set_keyframes`` with the cache and the stored descriptors (nothing prepared),
then queries (other views of the photos), each fetching its top_k's features into the LRU.
Reported after the queries: the LRU's entries and bytes, and every torch tensor the process
holds beyond the model's own (counted through the garbage collector, each storage once).

    .venv/bin/python bench/roma_lru_memory.py --ns 10,100,1000    # ~4 GB RSS, a few minutes
"""
from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from place_recognition import random_crop, resized, view  # noqa: E402

from roma_ros.demo.photo_pairs import PHOTO_NAMES, load_photo  # noqa: E402
from roma_ros.localize.pipeline import DecisionConfig, Relocalizer  # noqa: E402
from roma_ros.matching import MatcherConfig  # noqa: E402
from roma_ros.matching.roma import RomaMatcher  # noqa: E402
from roma_ros.store import KeyframeStore  # noqa: E402
from roma_ros.store.cache import cache_for, image_digest  # noqa: E402
from roma_ros.store.persisted import PersistedDescriptors  # noqa: E402


def held_tensors() -> tuple[int, int]:
    """(tensors, bytes) of every torch tensor alive in the process, each storage counted once."""
    seen, count, total = set(), 0, 0
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and not isinstance(obj, torch.nn.Parameter):
            storage = obj.untyped_storage()
            key = storage.data_ptr()
            count += 1
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()
    return count, total


def make_map(folder: Path, n: int, matcher: RomaMatcher, rgb: np.ndarray, state: dict, rng) -> None:
    store = KeyframeStore(folder)
    for i in range(n):
        store.add(rgb, [], name=f"kf{i:05d}")
    cache = cache_for(matcher, folder)
    digest = image_digest(rgb)
    for i in range(n):
        cache.save(f"kf{i:05d}.png", digest, state)  # the features, computed once, for every keyframe
    rows = rng.standard_normal((n, 1024)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    keyframes = KeyframeStore(folder, lazy=True).load()
    PersistedDescriptors(store).save(matcher.descriptor_key(), list(zip(keyframes, rows)))
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ns", default="10,100,1000")
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--feature-memory-mb", type=float, default=8.0)
    parser.add_argument("--coarse", type=int, default=112)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    config = MatcherConfig(model="roma_outdoor", device="cpu", coarse_res=args.coarse, upsample_res=0,
                           random_weights=True, num_samples=500, allow_download=False)
    start = time.perf_counter()
    matcher = RomaMatcher(config)
    print(f"roma lru memory: RoMa outdoor, RANDOM weights, coarse {args.coarse}, cpu; built in "
          f"{time.perf_counter() - start:.0f} s; feature_memory_mb {args.feature_memory_mb}, top_k {args.top_k}, "
          f"{args.queries} queries per N; keyframe features computed once and copied, descriptors SYNTHETIC")
    photos = [load_photo(name) for name in PHOTO_NAMES]
    rgb = resized(photos[0], (240, 320))
    prepared = matcher.prepare(rgb)
    state = {k: v.clone() for k, v in matcher.export_prepared(prepared).items()}
    per_keyframe = sum(v.nelement() * v.element_size() for v in state.values())
    del prepared
    queries = [view(resized(random_crop(photos[i % len(photos)], rng, 0.5, 1.0), (240, 320)), 0.4, rng)
               for i in range(args.queries)]
    gc.collect()
    base_count, base_bytes = held_tensors()
    work = Path(tempfile.mkdtemp(prefix="roma_lru_"))
    rows = []
    try:
        for n in sorted(int(v) for v in args.ns.split(",")):
            folder = work / f"n{n}"
            make_map(folder, n, matcher, rgb, state, rng)
            store = KeyframeStore(folder, lazy=True)
            reloc = Relocalizer(matcher, DecisionConfig(top_k=args.top_k, min_inliers=0),
                                feature_memory_mb=args.feature_memory_mb)
            t = time.perf_counter()
            reloc.set_keyframes(store.load(), cache_for(matcher, folder), PersistedDescriptors(store))
            load_s = time.perf_counter() - t
            assert len(reloc.keyframes) == n
            shortlisted = set()
            for query in queries:
                result = reloc.process(query)
                shortlisted |= {c.index for c in result.candidates}
            gc.collect()
            count, total = held_tensors()
            row = {"n": n, "load_s": load_s, "shortlisted": len(shortlisted), "lru_entries": len(reloc.features),
                   "lru_mb": reloc.features.bytes / 2**20, "evictions": reloc.features.stats.evictions,
                   "held_tensors": count - base_count, "held_mb": (total - base_bytes) / 2**20}
            rows.append(row)
            print({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
            del reloc, result
            store.close()
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\none keyframe's features: {per_keyframe / 2**10:.0f} KiB (at coarse {args.coarse}); holding all of "
          f"the largest N would take {per_keyframe * max(r['n'] for r in rows) / 2**20:.0f} MB")
    print(f"{'N':>6} {'load s':>7} {'shortlisted':>11} {'LRU entries':>11} {'LRU MB':>7} {'evictions':>9} "
          f"{'held tensors':>12} {'held MB':>8}")
    for r in rows:
        print(f"{r['n']:>6} {r['load_s']:>7.2f} {r['shortlisted']:>11} {r['lru_entries']:>11} {r['lru_mb']:>7.1f} "
              f"{r['evictions']:>9} {r['held_tensors']:>12} {r['held_mb']:>8.1f}")
    print("shortlisted: distinct keyframes the queries' shortlists touched; held: torch tensors alive beyond the "
          "model's after the queries (each storage once), i.e. what RoMa keeps for the map (on the GPU there)")


if __name__ == "__main__":
    main()
