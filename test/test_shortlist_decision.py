"""Shortlist from DINOv2 descriptors and the accept / reject decision."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import roma_config
from roma_ros.matching.classical import ClassicalMatcher
from roma_ros.matching.roma import RomaMatcher
from roma_ros.localize.pipeline import CandidateResult, DecisionConfig, Relocalizer, decide, shortlist
from roma_ros.store import Keyframe
from roma_ros.demo.photo_pairs import make_pair

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "brick", "grass")


def keyframe(name: str, rgb: np.ndarray) -> Keyframe:
    return Keyframe(name=name, image_file=f"{name}.png", image=rgb)


def test_shortlist_orders_by_cosine_and_clips_top_k():
    descriptors = np.eye(4, dtype=np.float32)
    query = np.array([0.1, 0.9, 0.3, 0.0], dtype=np.float32)
    assert shortlist(descriptors, query, 2, 4)[0] == [1, 2]
    indices, sims = shortlist(descriptors, query, 10, 4)  # top_k larger than the store
    assert indices == [1, 2, 0, 3] and sims[0] == pytest.approx(0.9)
    assert shortlist(descriptors, query, 0, 4)[0] == [1, 2, 0, 3]  # 0 = all
    assert shortlist(None, None, 3, 4) == ([0, 1, 2, 3], [None] * 4)  # no descriptors: every keyframe


def test_partial_sort_shortlist_equals_the_full_sort_and_does_not_sort_everything(monkeypatch):
    rng = np.random.default_rng(3)
    descriptors = rng.standard_normal((20000, 64)).astype(np.float16)  # float16 kept in memory is fine
    query = rng.standard_normal(64).astype(np.float32)
    similarity = descriptors @ query.astype(np.float16)
    expected = np.argsort(-similarity, kind="stable")[:7].tolist()
    calls = []
    real = np.argsort
    monkeypatch.setattr(np, "argsort", lambda a, *args, **kw: calls.append(len(a)) or real(a, *args, **kw))
    indices, sims = shortlist(descriptors, query, 7, len(descriptors))
    assert indices == expected and sims == sorted(sims, reverse=True)
    assert all(n <= 7 for n in calls)  # no O(N log N) sort of all 20 000


@pytest.fixture(scope="module")
def roma_reloc(roma_model):
    matcher = RomaMatcher(roma_config(num_samples=500), model=roma_model)
    reloc = Relocalizer(matcher, DecisionConfig(top_k=2, threshold=1.0, min_inliers=0))
    images = {name: make_pair(name, seed=3, size=(90, 120)).query for name in PHOTOS}
    reloc.set_keyframes([keyframe(n, rgb) for n, rgb in images.items()])
    return reloc, images


def test_descriptors_are_unit_vectors_from_dino(roma_reloc):
    reloc, _ = roma_reloc
    matrix = reloc._descriptors_matrix
    assert matrix.shape == (len(PHOTOS), 1024)
    # Rounded through float16 as the index stores them (store/persisted.py): unit to ~1e-5.
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(matrix, matrix.astype(np.float16).astype(np.float32))


def test_easy_query_ranks_its_keyframe_first_and_only_top_k_are_decoded(roma_reloc):
    reloc, images = roma_reloc
    rng = np.random.default_rng(0)
    for index, name in enumerate(PHOTOS):
        # Random weights carry only low-level image statistics, so the easy case is the
        # same view with sensor noise; real-weight retrieval is measured in bench/.
        noisy = images[name].astype(np.int16) + rng.normal(0, 3, images[name].shape).astype(np.int16)
        query = np.clip(noisy, 0, 255).astype(np.uint8)
        result = reloc.process(query)
        assert len(result.candidates) == 2
        assert result.candidates[0].index == index, f"{name}: shortlist {[c.index for c in result.candidates]}"
        assert result.candidates[0].similarity >= result.candidates[1].similarity


def test_top_k_larger_than_store_and_all(roma_reloc):
    reloc, images = roma_reloc
    for top_k in (0, 50):
        reloc.set_decision(DecisionConfig(top_k=top_k, threshold=1.0, min_inliers=0))
        result = reloc.process(images["coffee"])
        assert sorted(c.index for c in result.candidates) == list(range(len(PHOTOS)))
    reloc.set_decision(DecisionConfig(top_k=2, threshold=1.0, min_inliers=0))


def test_added_keyframe_joins_the_shortlist(roma_reloc):
    reloc, images = roma_reloc
    novel = make_pair("gravel", seed=3, size=(90, 120)).query
    index = reloc.add_keyframe(keyframe("gravel", novel))
    assert reloc._descriptors_matrix.shape[0] == index + 1
    assert reloc.process(novel).candidates[0].index == index


def test_min_overlap_rejects_low_certainty(roma_reloc):
    reloc, images = roma_reloc
    reloc.set_decision(DecisionConfig(top_k=1, threshold=50.0, min_inliers=0, min_overlap=1.0))
    result = reloc.process(images["rocket"])
    if result.best.verification.verified:
        assert not result.accepted and "overlap" in result.reason
    reloc.set_decision(DecisionConfig(top_k=2, threshold=1.0, min_inliers=0))


def test_score_weights_inliers_by_overlap():
    from roma_ros.localize.geometry import Verification
    from roma_ros.matching.base import Matches

    def candidate(inliers: int, overlap: float | None) -> CandidateResult:
        mask = np.zeros(400, bool)
        mask[:inliers] = True
        m = Matches(np.zeros((400, 2)), np.zeros((400, 2)), np.ones(400), overlap=overlap)
        return CandidateResult(0, m, Verification(True, np.eye(3), mask))

    smooth_but_wrong, right = candidate(300, 0.1), candidate(200, 0.6)
    assert right.score > smooth_but_wrong.score
    assert candidate(120, None).score == 120
    decision = DecisionConfig(min_inliers=150, min_overlap=0.2)
    assert decide(right, decision) == ""
    assert "min_inliers" in decide(candidate(100, 0.6), decision)
    assert "overlap 0.100 < min_overlap 0.2" in decide(smooth_but_wrong, decision)


def test_unrelated_query_rejected_matching_one_accepted():
    reloc = Relocalizer(ClassicalMatcher(), DecisionConfig(threshold=1.0, min_inliers=25))
    pairs = {name: make_pair(name, seed=7) for name in ("astronaut", "coffee", "chelsea")}
    reloc.set_keyframes([keyframe(n, p.candidate) for n, p in pairs.items()])
    accepted = reloc.process(pairs["coffee"].query)
    assert accepted.accepted and accepted.best.index == 1 and accepted.reason == ""
    rejected = reloc.process(make_pair("grass", seed=1).query)
    assert not rejected.accepted and "min_inliers" in rejected.reason or "degenerate" in rejected.reason


@pytest.mark.parametrize("bad", [dict(top_k=-1), dict(min_overlap=1.5), dict(min_inliers=-3)])
def test_bad_decision_settings(bad):
    with pytest.raises(ValueError):
        DecisionConfig(**bad).validate()


def test_classical_shortlist_applies_top_k_with_a_vocabulary_from_the_map():
    pairs = {name: make_pair(name, seed=11 + i) for i, name in enumerate(PHOTOS)}
    reloc = Relocalizer(ClassicalMatcher(), DecisionConfig(top_k=2, threshold=1.0, min_inliers=20))
    reloc.set_keyframes([keyframe(name, p.candidate) for name, p in pairs.items()])
    for i, p in enumerate(pairs.values()):
        result = reloc.process(p.query)
        assert len(result.candidates) == 2  # not all 6: top_k applies to the classical matcher
        assert result.candidates[0].index == i and result.accepted and result.best.index == i
    # A map built one add at a time from empty gets its vocabulary once it has enough features.
    grown = Relocalizer(ClassicalMatcher(), DecisionConfig(top_k=2, threshold=1.0, min_inliers=20))
    for name, p in pairs.items():
        grown.add_keyframe(keyframe(name, p.candidate))
    assert grown._descriptors_matrix is not None and grown._descriptors_matrix.shape == (6, 4096)
    assert len(grown.process(pairs["rocket"].query).candidates) == 2
