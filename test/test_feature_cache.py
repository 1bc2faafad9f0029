"""Keyframe features cached on disk: reused after a restart, invalidated by any change."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import roma_config
from roma_ros.matching.roma import RomaMatcher
from roma_ros.localize.pipeline import DecisionConfig, Relocalizer
from roma_ros.store import Keyframe, cache_file_name
from roma_ros.store.cache import FeatureCache, cache_for
from roma_ros.demo.photo_pairs import make_pair


@pytest.fixture(scope="module")
def keyframes():
    return [Keyframe(name=n, image_file=f"{n}.png", image=make_pair(n, seed=1, size=(90, 120)).candidate)
            for n in ("astronaut", "coffee")]


def counting(matcher):
    """Count real encoder runs of DINOv2 (the expensive part the cache saves)."""
    calls = []
    original = matcher._dino
    matcher._dino = lambda x: calls.append(x.shape) or original(x)
    return calls


def test_restart_loads_features_instead_of_encoding(roma_model, keyframes, tmp_path):
    first = RomaMatcher(roma_config(), model=roma_model)
    cache = cache_for(first, tmp_path)
    runs = counting(first)
    Relocalizer(first).set_keyframes(keyframes, cache)
    assert len(runs) == 2 and cache.stats.computed == 2 and cache.stats.loaded == 0
    files = sorted(p.name for p in cache.folder.iterdir())
    assert files == sorted(cache_file_name(tmp_path, f) for f in ("astronaut.png", "coffee.png"))

    second = RomaMatcher(roma_config(), model=roma_model)  # "after a restart"
    cache2 = cache_for(second, tmp_path)
    runs2 = counting(second)
    reloc = Relocalizer(second)
    reloc.set_keyframes(keyframes, cache2)
    assert runs2 == [] and cache2.stats.loaded == 2
    # Cached and fresh features give the same matches.
    query = make_pair("astronaut", seed=1, size=(90, 120)).query
    fresh = Relocalizer(RomaMatcher(roma_config(), model=roma_model))
    fresh.set_keyframes(keyframes)
    a, b = reloc.process(query), fresh.process(query)
    for x, y in zip(a.candidates, b.candidates):
        np.testing.assert_allclose(x.matches.kpts_candidate, y.matches.kpts_candidate, atol=1e-3)


def test_model_or_resolution_change_uses_another_cache(roma_model, keyframes, tmp_path):
    base = RomaMatcher(roma_config(), model=roma_model)
    other_res = RomaMatcher(roma_config(coarse_res=126), model=roma_model)
    indoor = RomaMatcher(roma_config(model="roma_indoor"), model=roma_model)
    keys = {m.cache_key() for m in (base, other_res, indoor)}
    assert len(keys) == 3
    Relocalizer(base).set_keyframes(keyframes, cache_for(base, tmp_path))
    cache = cache_for(other_res, tmp_path)
    runs = counting(other_res)
    Relocalizer(other_res).set_keyframes(keyframes, cache)
    assert cache.stats.computed == 2 and len(runs) == 2
    assert all(t.shape[-1] == 126 // 14 for t in (other_res.prepare(keyframes[0].image).dino,))


def test_changed_image_is_re_encoded(roma_model, keyframes, tmp_path):
    matcher = RomaMatcher(roma_config(), model=roma_model)
    Relocalizer(matcher).set_keyframes(keyframes, cache_for(matcher, tmp_path))
    edited = [Keyframe(name=k.name, image_file=k.image_file, image=255 - k.image) for k in keyframes]
    cache = cache_for(matcher, tmp_path)
    Relocalizer(matcher).set_keyframes(edited, cache)
    assert cache.stats.computed == 2 and cache.stats.loaded == 0


def test_corrupt_cache_file_is_recomputed_with_a_warning(roma_model, keyframes, tmp_path):
    matcher = RomaMatcher(roma_config(), model=roma_model)
    Relocalizer(matcher).set_keyframes(keyframes, cache_for(matcher, tmp_path))
    cache = cache_for(matcher, tmp_path)
    cache.path("coffee.png").write_bytes(b"garbage")
    Relocalizer(matcher).set_keyframes(keyframes, cache)
    assert cache.stats.loaded == 1 and cache.stats.computed == 1
    assert "unreadable" in cache.stats.warnings[0] and "coffee.png" in cache.stats.warnings[0]
    state = torch.load(cache.path("coffee.png"), weights_only=True)  # rewritten, readable again
    assert state["features"]["dino"].shape == (1, 1024, 8, 8)


def test_cache_of_wrong_shape_is_not_used(roma_model, keyframes, tmp_path):
    matcher = RomaMatcher(roma_config(), model=roma_model)
    cache = FeatureCache(tmp_path, matcher.cache_key())
    from roma_ros.store.cache import image_digest

    cache.save("astronaut.png", image_digest(keyframes[0].image), {"dino": torch.zeros(1, 1024, 3, 3)})
    prepared = cache.prepare(matcher, "astronaut.png", keyframes[0].image)
    assert prepared.dino.shape == (1, 1024, 8, 8) and cache.stats.computed == 1
    assert "does not fit" in cache.stats.warnings[0]


def test_keyframe_bytes_reported(roma_model, keyframes):
    matcher = RomaMatcher(roma_config(), model=roma_model)
    state = matcher.export_prepared(matcher.prepare(keyframes[0].image))
    assert set(state) == {"dino"}  # VGG pyramids are recomputed, not cached, by default
    full = RomaMatcher(roma_config(keep_vgg=True, upsample_res=224), model=roma_model)
    prepared = full.prepare(keyframes[0].image)
    state = full.export_prepared(prepared)
    assert set(state) >= {"dino", "ready_coarse_1", "ready_coarse_16", "ready_fine_1", "ready_fine_8"}
    assert state["ready_coarse_1"].shape[1] == 9  # projected: 64 VGG channels -> 9
    # Kept decoder inputs give the same warps as computing them per query.
    lazy = RomaMatcher(roma_config(upsample_res=224), model=roma_model)
    query = lazy.encode(keyframes[1].image)
    a = full.decode(query, [prepared])[0]
    b = lazy.decode(query, [lazy.prepare(keyframes[0].image)])[0]
    torch.testing.assert_close(a.warp, b.warp, atol=1e-4, rtol=0)
    # And they survive the disk cache.
    restored = full.import_prepared(keyframes[0].image, state)
    torch.testing.assert_close(full.decode(query, [restored])[0].warp, a.warp, atol=1e-5, rtol=0)


def test_classical_has_no_disk_cache(tmp_path):
    from roma_ros.matching.classical import ClassicalMatcher

    assert cache_for(ClassicalMatcher(), tmp_path) is None
    reloc = Relocalizer(ClassicalMatcher(), DecisionConfig(threshold=1.0))
    reloc.set_keyframes([], None)
    assert not (tmp_path / ".cache").exists()


def test_node_adds_keyframes_through_the_cache(ros, roma_model, tmp_path):
    """The node's add_keyframe encodes the new keyframe once; a reload reads it from disk."""
    from rosutil import wait_for
    from test_node import start

    from roma_ros.core.imageio import save_rgb

    folder = tmp_path / "kf"
    for name in ("astronaut", "coffee"):
        save_rgb(folder / f"{name}.png", make_pair(name, seed=1, size=(90, 120)).candidate)
    matcher = RomaMatcher(roma_config(num_samples=300), model=roma_model)
    node, probe, spinner = start(ros, folder, matcher=matcher, model="roma_outdoor", min_inliers=0)
    try:
        cache = node.relocalizer.cache
        assert cache is not None and cache.stats.computed == 2
        runs = counting(matcher)
        probe.send(make_pair("chelsea", seed=1, size=(90, 120)).query, timeout=120)
        assert len(runs) == 1  # the query alone: keyframes come from memory
        assert probe.call(probe.add_client).success
        assert len(runs) == 2 and cache.stats.computed == 3
        assert len(list(cache.folder.glob("*.pt"))) == 3
        assert probe.call(probe.reload_client).success
        reloaded = node.relocalizer.cache
        # The reload reads the descriptors from the index (issue 19): no feature file is read,
        # nothing encoded; a query then reads its shortlist's features from the cache.
        assert reloaded.stats.loaded == 0 and reloaded.stats.computed == 0 and len(runs) == 2
        probe.send(make_pair("chelsea", seed=1, size=(90, 120)).query, timeout=120)
        assert reloaded.stats.loaded == 3 and reloaded.stats.computed == 0 and len(runs) == 3
        wait_for(lambda: node.state == "ready", 5, "ready")
    finally:
        spinner.shut_down()
