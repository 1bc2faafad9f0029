"""The keyframe store at 10^3 to 10^5 keyframes: open/load, one add, following another
process, the shortlist, memory; the SQLite index beside the YAML store it replaced.

What is synthetic (said again in the output):
- images: 16x12 random PNGs written straight to the folder (no fsync), not camera frames;
- index rows: inserted in one transaction with KeyframeIndex.insert, not one add each
  (each with a pose, intrinsics and a depth entry, so rows are as large as real ones);
- descriptors: clustered unit 1024-d float32 vectors (a place seen ~20 times), not DINOv2
  output; the exact shortlist time does not depend on the values, FAISS's recall does;
- fetched features: RoMa-560-sized random tensors in the feature cache.
The adds ARE real: KeyframeStore.add with fsync, on the large store, 20 of them (mean).
The YAML store ("before") is roma_ros/store/folder.py at 67e2f94 (read from git), run on
the same folder with the same images where it finishes in reasonable time (--old-max).

    .venv/bin/python bench/scale.py store --ns 1000,10000,100000
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from roma_ros.localize.descriptors import DescriptorIndex, recall_vs_exact  # noqa: E402
from roma_ros.localize.pipeline import shortlist  # noqa: E402
from roma_ros.store import KeyframeStore  # noqa: E402
from roma_ros.store.index import KeyframeIndex  # noqa: E402
from roma_ros.store.persisted import PersistedDescriptors  # noqa: E402
from roma_ros.localize.pipeline import Relocalizer  # noqa: E402

OLD_COMMIT = "67e2f94"


def trim() -> None:
    """Return freed memory to the system (glibc), so RSS growth is what is held."""
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096 / 2**20


def entry(i: int) -> dict:
    return {"name": f"kf{i:06d}", "image": f"kf{i:06d}.png",
            "pose": {"position": [i * 0.5 % 400, (i * 0.37) % 300, 0.0], "orientation": [0.0, 0.0, 0.0, 1.0]},
            "intrinsics": {"fx": 525.0, "fy": 525.0, "cx": 7.5, "cy": 5.5},
            "added": "2026-12-01T00:00:00+00:00"}


def make_store(folder: Path, n: int, rng: np.random.Generator) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        ok, png = cv2.imencode(".png", rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
        (folder / f"kf{i:06d}.png").write_bytes(png.tobytes())
    index = KeyframeIndex(folder)
    with index.write() as db:
        for i in range(n):
            index.insert(db, entry(i))
    index.close()


def old_store_class():
    """KeyframeStore as it was before the SQLite index (the module, read from git)."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{OLD_COMMIT}:roma_ros/store/folder.py"],
                            capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_folder.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_folder", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_folder"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.KeyframeStore


def clustered(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Unit descriptors of places seen about 20 times each: a centre per place plus noise."""
    places = max(1, n // 20)
    rows = rng.standard_normal((places, dim)).astype(np.float32)[rng.integers(0, places, n)]
    rows += 0.05 * rng.standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def fetch_time(folder: Path, top_k: int, rng: np.random.Generator) -> float:
    """Seconds to fetch top_k keyframes' dense features on LRU misses: FeatureCache.load of
    RoMa-560-sized files (DINOv2 1x1024x40x40 float16, 3.3 MB; SYNTHETIC values)."""
    import torch

    from roma_ros.store.cache import FeatureCache

    cache = FeatureCache(folder, "bench")
    for i in range(top_k):
        cache.save(f"kf{i:06d}.png", f"d{i}", {"dino": torch.from_numpy(
            rng.standard_normal((1, 1024, 40, 40)).astype(np.float16))})
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for i in range(top_k):
            assert cache.load(f"kf{i:06d}.png", f"d{i}") is not None
        best = min(best, time.perf_counter() - start)
    return best


class StoredOnly:
    """A matcher whose descriptors all come from the index: any keyframe preparation fails
    the run, so start_s measures what the node does once a map has been described."""

    name, device = "bench-synthetic", "cpu"

    def descriptor_key(self) -> str:
        return "bench-synthetic-1024"

    def prepare(self, image):
        raise AssertionError("a keyframe was prepared although its descriptor is stored")

    def describe(self, prepared):
        raise AssertionError("describe called")


def store_descriptors(folder: Path, descriptors: np.ndarray) -> None:
    """The SYNTHETIC descriptors written to the index as the node writes computed ones."""
    persisted = PersistedDescriptors(KeyframeStore(folder))
    for start in range(0, len(descriptors), 10_000):
        persisted.save(StoredOnly().descriptor_key(),
                       [(type("K", (), {"image_file": f"kf{i:06d}.png"})(), descriptors[i])
                        for i in range(start, min(start + 10_000, len(descriptors)))])
    persisted.store.close()


def node_start(folder: Path, reloc: Relocalizer) -> int:
    """What the node's start and ~/reload_keyframes do: a lazy load, then set_keyframes with the
    stored descriptors (one query, no keyframe prepared)."""
    store = KeyframeStore(folder, lazy=True)
    keyframes = store.load()
    reloc.set_keyframes(keyframes, None, PersistedDescriptors(store))
    store.close()
    return len(reloc.keyframes)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ns", default="1000,10000,100000")
    parser.add_argument("--old-max", type=int, default=1000, help="largest N run with the YAML store")
    parser.add_argument("--adds", type=int, default=20)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--faiss-min", type=int, default=50_000, help="N from which FAISS is measured too")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(prefix="store_scale_"))
    print("store scale: SYNTHETIC images (16x12 random PNG), rows written directly to the index, clustered "
          f"{args.dim}-d float32 descriptors, random RoMa-sized cache files; adds, loads and polls are real KeyframeStore calls (2-core machine)")
    rows = []
    try:
        for n in sorted(int(v) for v in args.ns.split(",")):
            folder = work / f"n{n}"
            _, gen_s = timed(lambda: make_store(folder, n, rng))
            base = rss_mb()
            store = KeyframeStore(folder)
            keyframes, load_s = timed(store.load)
            assert len(keyframes) == n, (len(keyframes), store.warnings[:3])
            load_mb = rss_mb() - base
            del keyframes
            reload_s = timed(lambda: KeyframeStore(folder).load())[1]
            base = rss_mb()
            lazy_keyframes, lazy_s = timed(KeyframeStore(folder, lazy=True).load)  # what the node does
            lazy_mb = rss_mb() - base
            del lazy_keyframes
            descriptors = clustered(n, args.dim, rng)  # float32, as Relocalizer keeps them
            _, store_desc_s = timed(lambda: store_descriptors(folder, descriptors))
            trim()
            base = rss_mb()
            reloc = Relocalizer(StoredOnly())
            count, start_s = timed(lambda: node_start(folder, reloc))
            assert count == n and reloc._descriptors_matrix.shape == (n, args.dim), reloc.skipped[:3]
            trim()
            start_mb = rss_mb() - base
            # The first query's shortlist (builds the FAISS index beyond faiss_min): what is held then.
            _, first_search_s = timed(lambda: reloc._descriptors.search(descriptors[1], args.top_k))
            trim()
            held_mb = rss_mb() - base
            search_s = min(timed(lambda q=q: reloc._descriptors.search(q, args.top_k))[1] for q in descriptors[:20])
            _, node_reload_s = timed(lambda: node_start(folder, reloc))
            del reloc
            trim()
            image = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
            add_times = [timed(lambda: store.add(image, [], name="added"))[1] for _ in range(args.adds)]
            poll_s = min(timed(store.poll)[1] for _ in range(20))
            other = KeyframeStore(folder)
            other.add(image, [], name="other")
            change, follow_s = timed(store.poll)
            assert change is not None and [k.name for k in change.added] == ["other"]
            within_s = timed(lambda: store.index().within((100.0, 100.0, 0.0), 2.0))[1]
            queries = descriptors[rng.integers(0, n, args.queries)] + 0.02 * rng.standard_normal(
                (args.queries, args.dim)).astype(np.float32)
            query = queries[0]
            shortlist(descriptors, query, args.top_k, n)
            short_s = min(timed(lambda: shortlist(descriptors, query, args.top_k, n))[1] for _ in range(args.queries))
            fetch_s = fetch_time(folder, args.top_k, rng)
            faiss_row = {}
            if n >= args.faiss_min:
                index = DescriptorIndex.of(descriptors, faiss_min=args.faiss_min)
                if index.uses_faiss():
                    _, build_s = timed(lambda: index.search(query, args.top_k))
                    ann_s = min(timed(lambda q=q: index.search(q, args.top_k))[1] for q in queries)
                    faiss_row = {"faiss_build_s": build_s, "faiss_ms": 1000 * ann_s,
                                 "faiss_recall": recall_vs_exact(index, queries, args.top_k)}
                del index
            row = {"n": n, "generate_s": gen_s, "load_s": load_s, "reload_s": reload_s, "load_mb": load_mb,
                   "lazy_load_s": lazy_s, "lazy_mb": lazy_mb, "store_descriptors_s": store_desc_s,
                   "start_s": start_s, "node_reload_s": node_reload_s, "start_mb": start_mb,
                   "first_search_s": first_search_s, "held_mb": held_mb, "node_shortlist_ms": 1000 * search_s,
                   "add_ms": 1000 * float(np.mean(add_times)), "add_max_ms": 1000 * max(add_times),
                   "poll_us": 1e6 * poll_s, "follow_ms": 1000 * follow_s, "within_ms": 1000 * within_s,
                   "shortlist_ms": 1000 * short_s, "fetch_ms": 1000 * fetch_s,
                   "descriptors_mb": descriptors.nbytes / 2**20, **faiss_row}
            if n <= args.old_max:
                old_folder = work / f"old{n}"
                old_folder.mkdir()
                for i in range(n):
                    shutil.copyfile(folder / f"kf{i:06d}.png", old_folder / f"kf{i:06d}.png")
                (old_folder / "keyframes.yaml").write_text(
                    yaml.safe_dump({"keyframes": [entry(i) for i in range(n)]}, sort_keys=False))
                old = old_store_class()(old_folder)
                old_keyframes, row["old_load_s"] = timed(old.load)
                old_adds = [timed(lambda: old_keyframes.append(old.add(image, old_keyframes)))[1] for _ in range(3)]
                row["old_add_ms"] = 1000 * float(np.mean(old_adds))
            rows.append(row)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
            store.close()
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'N':>7} {'start s':>7} {'reload s':>8} {'start MB':>8} {'1st search s':>12} {'held MB':>7} "
          f"{'shortlist ms':>12}  (the node: lazy load + set_keyframes on stored descriptors)")
    for r in rows:
        print(f"{r['n']:>7} {r['start_s']:>7.2f} {r['node_reload_s']:>8.2f} {r['start_mb']:>8.0f} "
              f"{r['first_search_s']:>12.2f} {r['held_mb']:>7.0f} {r['node_shortlist_ms']:>12.2f}")
    print(f"\n{'N':>7} {'load s':>7} {'reload s':>8} {'load MB':>7} {'lazy s':>6} {'lazy MB':>7} {'add ms':>7} {'add max':>7} {'poll us':>7} "
          f"{'follow ms':>9} {'radius ms':>9} {'shortlist ms':>12} {'fetch ms':>8} {'desc MB':>7} | "
          f"{'FAISS ms':>8} {'recall':>6} {'build s':>7} | {'YAML load s':>11} {'YAML add ms':>11}")
    for r in rows:
        old = (f"{r['old_load_s']:>11.2f} {r['old_add_ms']:>11.0f}" if "old_load_s" in r else f"{'-':>11} {'-':>11}")
        ann = (f"{r['faiss_ms']:>8.2f} {r['faiss_recall']:>6.3f} {r['faiss_build_s']:>7.1f}" if "faiss_ms" in r
               else f"{'-':>8} {'-':>6} {'-':>7}")
        print(f"{r['n']:>7} {r['load_s']:>7.2f} {r['reload_s']:>8.2f} {r['load_mb']:>7.0f} {r['lazy_load_s']:>6.2f} "
              f"{r['lazy_mb']:>7.0f} {r['add_ms']:>7.1f} "
              f"{r['add_max_ms']:>7.1f} {r['poll_us']:>7.0f} {r['follow_ms']:>9.2f} {r['within_ms']:>9.2f} "
              f"{r['shortlist_ms']:>12.2f} {r['fetch_ms']:>8.1f} {r['descriptors_mb']:>7.0f} | {ann} | {old}")
    print("load: KeyframeStore.load in a fresh process state (open, recover, YAML check, rows, decode every "
          "image); reload: a second store object; load MB: RSS growth of the load (images held decoded); lazy: "
          "KeyframeStore(lazy=True).load, the node's (headers checked, no pixels held), and its RSS growth; "
          "add: KeyframeStore.add with fsync on the N-keyframe store (mean, max of --adds); poll: "
          "KeyframeStore.poll when nothing changed; follow: poll after another store added one; radius: "
          "R*Tree keyframes within 2 m; shortlist: exact descriptors @ query + partial sort (top_k "
          f"{args.top_k}) on SYNTHETIC clustered descriptors; fetch: top_k LRU misses read from the feature cache "
          "(RoMa-560-sized SYNTHETIC files); desc MB: the float32 descriptor matrix of the synthetic rows; FAISS: DescriptorIndex IVF (float16 codes and rows) per query, "
          f"recall@{args.top_k} against exact, first-search build time. YAML: the store at {OLD_COMMIT}. "
          "start: the node's start (KeyframeStore(lazy=True).load + Relocalizer.set_keyframes reading the "
          "stored float16 descriptors, SYNTHETIC values; no keyframe prepared), its RSS growth after malloc_trim "
          "(the keyframe records + the descriptor matrix); 1st search: the first query's shortlist (builds the FAISS "
          "index beyond 50 000); held MB: RSS growth after it (records + matrix + FAISS: the node's memory beyond "
          "the LRU); shortlist: DescriptorIndex.search, best of 20 (FAISS beyond 50 000); reload: the same start "
          "again on the loaded Relocalizer (~/reload_keyframes).")


if __name__ == "__main__":
    main()
