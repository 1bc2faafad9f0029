"""Dense keyframe features in a bounded LRU (feature_memory_mb): same matches as holding
everything, memory flat in the number of keyframes."""
from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from roma_ros.demo.photo_pairs import make_pair
from roma_ros.localize.features import FeatureLRU, held_bytes
from roma_ros.localize.pipeline import DecisionConfig, Relocalizer
from roma_ros.matching.classical import ClassicalMatcher
from roma_ros.store import Keyframe

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "brick", "grass")


def keyframe(name: str, rgb: np.ndarray) -> Keyframe:
    return Keyframe(name=name, image_file=f"{name}.png", image=rgb)


def test_eviction_and_reload_give_the_same_matches_as_holding_everything():
    pairs = {name: make_pair(name, seed=11 + i) for i, name in enumerate(PHOTOS)}
    keyframes = [keyframe(name, p.candidate) for name, p in pairs.items()]
    decision = DecisionConfig(top_k=2, threshold=1.0, min_inliers=20)
    everything = Relocalizer(ClassicalMatcher(), decision)
    everything.set_keyframes(keyframes)
    one = held_bytes(ClassicalMatcher().prepare(keyframes[0].image))
    bounded = Relocalizer(ClassicalMatcher(), decision, feature_memory_mb=1.5 * one / 2**20)
    bounded.set_keyframes(keyframes)
    assert len(bounded.features) == 1 and bounded.features.bytes <= bounded.feature_budget
    for reload in (False, True):
        if reload:
            bounded.set_keyframes(keyframes)
        for p in pairs.values():
            a, b = everything.process(p.query), bounded.process(p.query)
            assert [c.index for c in a.candidates] == [c.index for c in b.candidates]
            for ca, cb in zip(a.candidates, b.candidates):
                np.testing.assert_array_equal(ca.matches.kpts_query, cb.matches.kpts_query)
                np.testing.assert_array_equal(ca.matches.kpts_candidate, cb.matches.kpts_candidate)
                assert ca.inliers == cb.inliers
            assert a.accepted and b.accepted and a.best.index == b.best.index
    stats = bounded.features.stats
    assert stats.misses > 0 and stats.evictions > 0 and bounded.features.bytes <= bounded.feature_budget
    assert everything.features.stats.misses == 0  # no bound: every keyframe's features stay


class TensorMatcher:
    """RoMa's shape of the work without the network: 64 KB of float32 "features" per keyframe,
    a 16-d descriptor, matches from the feature values (so a wrong fetch would show)."""

    name, device = "tensor", "cpu"

    def prepare(self, rgb):
        return {"dino": torch.full((1, 16384), float(rgb.mean()), dtype=torch.float32)}

    def describe(self, prepared):
        value = float(prepared["dino"][0, 0])
        vector = np.cos(np.arange(16) * (1 + value / 50.0)).astype(np.float32)
        return vector / np.linalg.norm(vector)

    def match_prepared(self, query, candidates):
        from roma_ros.matching.base import Matches

        return [Matches(np.full((8, 2), float(c["dino"][0, 0]), np.float32), np.zeros((8, 2), np.float32),
                        np.ones(8, np.float32)) for c in candidates]


def live_tensors() -> int:
    gc.collect()
    return sum(isinstance(o, torch.Tensor) for o in gc.get_objects())


@pytest.mark.parametrize("budget_mb", [0.5])
def test_held_feature_memory_stays_flat_from_10_to_1000_keyframes(budget_mb):
    held = {}
    for n in (10, 1000):
        keyframes = [keyframe(f"k{i}", np.full((8, 8, 3), i % 250, np.uint8)) for i in range(n)]
        reloc = Relocalizer(TensorMatcher(), DecisionConfig(top_k=3, min_inliers=0), feature_memory_mb=budget_mb)
        before = live_tensors()
        reloc.set_keyframes(keyframes)
        for i in (1, 5, 7):
            reloc.process(np.full((8, 8, 3), i, np.uint8))
        held[n] = (live_tensors() - before, reloc.features.bytes)
        assert reloc.features.bytes <= budget_mb * 2**20
        del reloc
    assert held[10][0] == held[1000][0] == budget_mb * 2**20 // (16384 * 4)  # 8 tensors of 64 KB either way
    unbounded = Relocalizer(TensorMatcher(), DecisionConfig(top_k=3, min_inliers=0))
    unbounded.set_keyframes([keyframe(f"k{i}", np.full((8, 8, 3), i % 250, np.uint8)) for i in range(1000)])
    assert unbounded.features.bytes == 1000 * 16384 * 4  # what the bound saves: all 1000 held


def test_the_lru_counts_hits_misses_and_keeps_nothing_larger_than_the_budget():
    lru = FeatureLRU(budget_bytes=1000)
    made = []
    for key in ("a", "b", "a", "c", "a", "big"):
        size = 5000 if key == "big" else 400
        lru.get(key, lambda k=key, s=size: made.append(k) or np.zeros(s, np.uint8))
    assert made == ["a", "b", "c", "big"] and (lru.stats.hits, lru.stats.misses) == (2, 4)
    assert lru.bytes == 800 and len(lru) == 2 and lru.stats.evictions == 1  # b went, big was never kept
    with pytest.raises(ValueError, match="feature_memory_mb"):
        Relocalizer(TensorMatcher(), feature_memory_mb=-1)


def clustered(n: int, dim: int, rng: np.random.Generator, places: int = 500) -> np.ndarray:
    """Descriptors as places seen several times: a centre per place plus noise, unit length."""
    centres = rng.standard_normal((places, dim)).astype(np.float32)
    rows = centres[rng.integers(0, places, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_faiss_beyond_its_threshold_keeps_recall_and_takes_appends():
    pytest.importorskip("faiss")
    from roma_ros.localize.descriptors import DescriptorIndex, recall_vs_exact

    rng = np.random.default_rng(5)
    rows = clustered(20000, 128, rng)
    index = DescriptorIndex.of(rows[:19000], faiss_min=5000)
    assert index.uses_faiss()
    queries = rows[rng.integers(0, 19000, 50)] + 0.3 * rng.standard_normal((50, 128)).astype(np.float32)
    assert recall_vs_exact(index, queries, 5) >= 0.9
    for row in rows[19000:]:  # appends after the build are found too
        index.append(row)
    assert index.search(rows[19999], 1)[0] == [19999] and len(index) == 20000
    small = DescriptorIndex.of(rows[:100], faiss_min=5000)
    assert not small.uses_faiss() and recall_vs_exact(small, queries, 5) == 1.0  # exact below it


def test_a_large_index_holds_float16_rows_and_float16_faiss_codes():
    """issue 19's memory bound at 10^5: beyond faiss_min the rows are float16 (half of float32)
    and FAISS keeps float16 codes (no float32 IVF-Flat copy), with IVF-Flat's recall."""
    faiss = pytest.importorskip("faiss")
    from roma_ros.localize.descriptors import DescriptorIndex, exact_top, recall_vs_exact

    rng = np.random.default_rng(5)
    rows = clustered(20000, 128, rng)
    small = DescriptorIndex.of(rows[:3000], faiss_min=10000)
    assert small.matrix.dtype == np.float32  # below it: float32 for the BLAS exact search
    index = DescriptorIndex.adopt(rows.copy(), faiss_min=10000)
    assert index.matrix.dtype == np.float16 and index._buffer.nbytes == 20000 * 128 * 2
    queries = rows[rng.integers(0, 20000, 50)] + 0.3 * rng.standard_normal((50, 128)).astype(np.float32)
    rounded = rows.astype(np.float16).astype(np.float32)
    for query in queries[:5]:  # the chunked float16 exact search computes what float32 BLAS does
        order, similarity = exact_top(index.matrix, query, 5)
        np.testing.assert_allclose(similarity, exact_top(rounded, query, 5)[1], atol=1e-5)
        np.testing.assert_allclose(similarity, rounded[order] @ query, atol=1e-5)
        assert len(set(order.tolist()) & set(exact_top(rows, query, 5)[0].tolist())) >= 4  # fp16: near-ties only
    recall = recall_vs_exact(index, queries, 5)
    ann = faiss.downcast_index(index._ann)
    assert isinstance(ann, faiss.IndexIVFScalarQuantizer)
    # Against a float32 IVF-Flat with the same lists and probes: the codes cost no recall.
    flat = faiss.IndexIVFFlat(faiss.IndexFlatIP(128), 128, ann.nlist, faiss.METRIC_INNER_PRODUCT)
    flat.train(rows[np.sort(np.random.default_rng(0).choice(20000, 40 * ann.nlist, replace=False))])
    flat.add(rows)
    flat.nprobe = ann.nprobe
    found = flat.search(queries, 5)[1]
    flat_recall = np.mean([len(set(f) & set(exact_top(rows, q, 5)[0].tolist())) / 5 for f, q in zip(found, queries)])
    assert recall >= 0.85 and recall >= flat_recall - 0.02, (recall, flat_recall)
    grown = DescriptorIndex.of(rows[:9999], faiss_min=10000)
    grown.extend(rows[9999:10100])  # crossing the threshold by appends converts once
    assert grown.matrix.dtype == np.float16 and len(grown) == 10100
    assert grown.search(rows[10050], 1)[0] == [10050]


def test_relocalizer_adds_descriptors_in_place_not_by_copying_the_matrix():
    reloc = Relocalizer(TensorMatcher(), DecisionConfig(top_k=2, min_inliers=0), feature_memory_mb=1)
    grown = []
    for i in range(300):
        reloc.add_keyframe(keyframe(f"k{i}", np.full((8, 8, 3), i % 250, np.uint8)))
        grown.append(id(reloc._descriptors._buffer))
    assert len(set(grown)) <= 6  # the buffer grows by 1024 rows or an eighth: a handful of copies, not 300
    assert reloc._descriptors_matrix.shape == (300, 16)
    assert len(reloc.process(np.full((8, 8, 3), 7, np.uint8)).candidates) == 2


def test_a_keyframe_file_gone_bad_after_a_lazy_load_costs_only_that_keyframe(tmp_path):
    from roma_ros.core.imageio import save_rgb
    from roma_ros.store import KeyframeStore

    pairs = {name: make_pair(name, seed=11 + i) for i, name in enumerate(PHOTOS[:3])}
    for name, p in pairs.items():
        save_rgb(tmp_path / f"{name}.png", p.candidate)
    keyframes = KeyframeStore(tmp_path, lazy=True).load()
    (tmp_path / "coffee.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated now")
    reloc = Relocalizer(ClassicalMatcher(), DecisionConfig(top_k=2, threshold=1.0, min_inliers=20))
    reloc.set_keyframes(keyframes)
    assert [k.name for k in reloc.keyframes] == ["astronaut", "chelsea"]
    assert len(reloc.skipped) == 1 and "coffee.png" in reloc.skipped[0]
    result = reloc.process(pairs["chelsea"].query)
    assert result.accepted and result.keyframes[result.best.index].name == "chelsea"


def test_queries_run_during_a_reload_against_the_previous_set():
    import threading
    import time

    class SlowTensorMatcher(TensorMatcher):
        def prepare(self, rgb):
            if rgb.shape[0] == 8:  # keyframes: slow, as restoring RoMa features is
                time.sleep(0.05)
            return super().prepare(rgb)

    reloc = Relocalizer(SlowTensorMatcher(), DecisionConfig(top_k=2, min_inliers=0))
    first = [keyframe(f"old{i}", np.full((8, 8, 3), i, np.uint8)) for i in range(3)]
    reloc.set_keyframes(first)
    second = [keyframe(f"new{i}", np.full((8, 8, 3), i, np.uint8)) for i in range(40)]  # ~2 s
    reload = threading.Thread(target=reloc.set_keyframes, args=(second,))
    reload.start()
    time.sleep(0.2)
    start = time.perf_counter()
    result = reloc.process(np.full((9, 9, 3), 1, np.uint8))
    answered_during_reload = reload.is_alive()
    reload.join()
    assert answered_during_reload, f"the query waited {time.perf_counter() - start:.1f} s for the reload"
    assert all(result.keyframes[c.index].name.startswith("old") for c in result.candidates)
    assert len(reloc.keyframes) == 40
