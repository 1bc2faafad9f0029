"""Global descriptors and the classical vocabulary kept in the index (schema 2): a start or
reload reads them instead of preparing every keyframe, and ranks exactly as before."""
from __future__ import annotations

import os

import numpy as np

from roma_ros.core.imageio import save_rgb
from roma_ros.demo.photo_pairs import make_pair
from roma_ros.localize.pipeline import DecisionConfig, Relocalizer
from roma_ros.matching.classical import ClassicalMatcher
from roma_ros.store import KeyframeStore
from roma_ros.store.persisted import PersistedDescriptors

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "brick", "grass")


class Counting(ClassicalMatcher):
    """The classical matcher, counting its keyframe preparations and vocabulary fits."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.prepared = self.fits = 0

    def prepare(self, image):
        self.prepared += 1
        return super().prepare(image)

    def fit_vocabulary(self, prepared, seed: int = 0) -> None:
        self.fits += 1
        super().fit_vocabulary(prepared, seed)


def make_map(folder, names=PHOTOS):
    pairs = {name: make_pair(name, seed=11 + i) for i, name in enumerate(names)}
    store = KeyframeStore(folder, lazy=True)
    for name, pair in pairs.items():
        store.add(pair.candidate, [], name=name)
    return pairs


def start(folder, matcher=None, lazy=True):
    """What the node does at start and on ~/reload_keyframes."""
    store = KeyframeStore(folder, lazy=lazy)
    reloc = Relocalizer(matcher or Counting(), DecisionConfig(top_k=2, threshold=1.0, min_inliers=20))
    reloc.set_keyframes(store.load(), None, PersistedDescriptors(store))
    return store, reloc


def ranking(reloc, pairs):
    return [[(c.index, c.similarity) for c in reloc.process(p.query).candidates] for p in pairs.values()]


def test_a_restart_prepares_no_keyframe_and_ranks_as_before(tmp_path):
    pairs = make_map(tmp_path / "kf")
    _, first = start(tmp_path / "kf")
    assert first.matcher.prepared >= len(PHOTOS) and first.matcher.fits == 1  # the first start describes all
    before = ranking(first, pairs)
    assert [r[0][0] for r in before] == list(range(len(PHOTOS)))  # each query finds its keyframe first
    _, second = start(tmp_path / "kf")
    assert second.matcher.prepared == 0 and second.matcher.fits == 0  # read from SQLite, vocabulary too
    np.testing.assert_array_equal(second._descriptors_matrix, first._descriptors_matrix)
    assert ranking(second, pairs) == before  # float16 on both sides: the same similarities
    # Queries prepare themselves and the shortlisted keyframes, once each (into the LRU).
    shortlisted = {i for r in before for i, _ in r}
    assert second.matcher.prepared == len(PHOTOS) + len(shortlisted)


def test_an_edited_image_another_model_and_a_removal_are_not_served_stale(tmp_path):
    pairs = make_map(tmp_path / "kf")
    start(tmp_path / "kf")
    path = tmp_path / "kf" / "coffee.png"
    save_rgb(path, pairs["rocket"].candidate)  # replaced in place: size and mtime change
    os.utime(path, ns=(1, 1))
    _, reloc = start(tmp_path / "kf")
    assert reloc.matcher.prepared == 1  # only the edited keyframe is described again
    assert reloc.process(pairs["rocket"].query).candidates[0].index in (1, 3)
    _, other = start(tmp_path / "kf", Counting(num_features=1000))  # other SIFT settings: another key
    assert other.matcher.prepared == len(PHOTOS) and other.matcher.fits == 0  # the vocabulary is shared
    store = KeyframeStore(tmp_path / "kf")
    store.remove("grass")
    keys = {k for (k,) in store.index()._conn.execute("SELECT DISTINCT key FROM descriptors")}
    assert len(keys) == 2
    images = [i for (i,) in store.index()._conn.execute("SELECT image FROM descriptors")]
    assert "grass.png" not in images and len(images) == 2 * (len(PHOTOS) - 1)


def test_added_keyframes_are_stored_and_a_grown_map_learns_its_vocabulary_again(tmp_path):
    pairs = make_map(tmp_path / "kf", PHOTOS[:2])
    store, reloc = start(tmp_path / "kf")
    assert reloc.matcher.fits == 1
    rest = {name: make_pair(name, seed=11 + i) for i, name in enumerate(PHOTOS) if name not in pairs}
    for name, pair in rest.items():  # as ~/add_keyframe does
        reloc.add_keyframe(store.add(pair.candidate, reloc.keyframes, name=name))
    _, again = start(tmp_path / "kf")
    # Learnt from 2 keyframes, the map now has 6: learnt again (from all 6), all described once.
    assert again.matcher.fits == 1 and again.matcher.prepared == len(PHOTOS)
    _, third = start(tmp_path / "kf")
    assert third.matcher.fits == 0 and third.matcher.prepared == 0
    assert [r[0][0] for r in ranking(third, {**pairs, **rest})] == list(range(len(PHOTOS)))


def test_a_read_only_index_still_loads_and_computes(tmp_path):
    make_map(tmp_path / "kf")
    store = KeyframeStore(tmp_path / "kf", lazy=True)
    keyframes = store.load()
    persisted = PersistedDescriptors(store)
    store.index()._conn.execute("PRAGMA query_only = ON")  # writes fail as on a read-only folder
    reloc = Relocalizer(Counting(), DecisionConfig(top_k=2))
    reloc.set_keyframes(keyframes, None, persisted)
    assert reloc._descriptors_matrix.shape == (len(PHOTOS), 4096)
    assert any("not stored" in w for w in reloc.skipped)
