"""RoMa and Tiny RoMa wrappers with random weights at small resolutions."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TEST_COARSE, TEST_UPSAMPLE, roma_config
from roma_ros.matching.roma import RomaMatcher, as_romatch_builds_it
from roma_ros.matching.tiny import TinyRomaMatcher
from roma_ros.demo.photo_pairs import load_photo


def photo(name: str, hw: tuple[int, int]) -> np.ndarray:
    import cv2

    return cv2.resize(load_photo(name), (hw[1], hw[0]), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def images():
    # Non-square, different sizes: coordinates must come back in each image's own pixels.
    return photo("astronaut", (90, 150)), photo("coffee", (130, 70))


@pytest.mark.parametrize("upsample", [0, TEST_UPSAMPLE])
@pytest.mark.parametrize("symmetric", [True, False])
def test_decode_equals_romatch_match(roma_model, images, upsample, symmetric):
    """Our encode-once / batched decode (channels-last, dense local correlation) reproduces
    romatch's match() as shipped on the same weights."""
    matcher = RomaMatcher(roma_config(upsample_res=upsample, symmetric=symmetric), model=roma_model)
    a, b = images
    kw = dict(im_A_high_res=matcher.model_input(a, matcher.fine_hw),
              im_B_high_res=matcher.model_input(b, matcher.fine_hw)) if upsample else {}
    with as_romatch_builds_it(roma_model):
        warp, cert = roma_model.match(Image.fromarray(a), Image.fromarray(b), **kw)
    q, c = matcher.encode(a), matcher.encode(b)
    ours = matcher.decode(q, [c, c])
    res = upsample or TEST_COARSE
    assert ours[0].warp.shape == (res, res * (2 if symmetric else 1), 4)
    # fp32 on CPU; differences come only from kernel choices (layout, batch size, matmul order).
    torch.testing.assert_close(ours[0].warp, warp[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(ours[0].certainty, cert[0], atol=1e-4, rtol=0)
    # Two candidates in one batch decode exactly like one.
    torch.testing.assert_close(ours[1].warp, ours[0].warp, atol=1e-5, rtol=0)


def test_dino_only_encoding_completes_to_the_same_features(roma_model, images):
    matcher = RomaMatcher(roma_config(upsample_res=TEST_UPSAMPLE), model=roma_model)
    full = matcher.encode(images[0])
    lazy = matcher.encode(images[0], with_vgg=False)
    assert set(lazy.coarse) == {16} and lazy.fine is None
    done = matcher.completed(lazy)
    assert set(lazy.coarse) == {16}, "completing must not grow the cached encoding"
    assert set(done.coarse) == set(full.coarse) == {1, 2, 4, 8, 16}
    for scale in full.coarse:
        torch.testing.assert_close(done.coarse[scale], full.coarse[scale])
    for scale in full.fine:
        torch.testing.assert_close(done.fine[scale], full.fine[scale])


def test_matches_are_in_original_pixels(roma_model, images):
    a, b = images
    matcher = RomaMatcher(roma_config(num_samples=1500), model=roma_model)
    dense = matcher.decode(matcher.encode(a), [matcher.encode(b)])[0]
    m = matcher.sample(dense, a.shape[:2], b.shape[:2])
    assert 0 < len(m) <= 1500
    assert m.kpts_query.dtype == np.float32 and m.kpts_query.shape == (len(m), 2)
    for kpts, (h, w) in ((m.kpts_query, a.shape[:2]), (m.kpts_candidate, b.shape[:2])):
        assert kpts.min() >= 0 and kpts[:, 0].max() <= w and kpts[:, 1].max() <= h
    # Query pixels of the A->B half sit on the model's pixel grid, scaled to the original size.
    forward = m.kpts_query[: len(m)]
    gx = forward[:, 0] / a.shape[1] * TEST_COARSE - 0.5
    gy = forward[:, 1] / a.shape[0] * TEST_COARSE - 0.5
    on_grid = (np.abs(gx - np.round(gx)) < 1e-3) & (np.abs(gy - np.round(gy)) < 1e-3)
    # Symmetric warps also hold B->A matches, whose query side is off-grid.
    assert on_grid.mean() > 0.2
    assert 0.0 <= m.overlap <= 1.0


def test_resize_to_model_reports_model_pixels(roma_model, images):
    matcher = RomaMatcher(roma_config(resize_to_model=True, num_samples=500), model=roma_model)
    m = matcher.match(*images)
    assert m.kpts_query.max() <= TEST_COARSE and m.kpts_candidate.max() <= TEST_COARSE
    assert m.kpts_query.max() > 0.7 * TEST_COARSE


def test_match_many_shares_one_query_encoding(roma_model, images):
    matcher = RomaMatcher(roma_config(num_samples=300), model=roma_model)
    calls = []
    original = matcher.encode
    matcher.encode = lambda rgb, **kw: calls.append(rgb.shape) or original(rgb, **kw)
    results = matcher.match_many(images[0], [images[1], images[0], images[1]])
    assert len(calls) == 4  # the query once, each candidate once
    matcher.encode = original
    assert [len(r) for r in results] == [300, 300, 300]
    # Same candidate twice, same seed: identical samples.
    np.testing.assert_array_equal(results[0].kpts_candidate, results[2].kpts_candidate)


def test_tiny_roma_random_weights(tiny_model, images):
    a, b = images
    matcher = TinyRomaMatcher(roma_config(model="tiny_roma_outdoor", coarse_res=TEST_UPSAMPLE, num_samples=800),
                              model=tiny_model)
    m = matcher.match(a, b)
    assert len(m) == 800
    assert m.kpts_query[:, 0].max() <= a.shape[1] and m.kpts_query[:, 1].max() <= a.shape[0]
    assert m.kpts_candidate[:, 0].max() <= b.shape[1] and m.kpts_candidate[:, 1].max() <= b.shape[0]
    # Query pixels cover most of the query image.
    assert np.ptp(m.kpts_query[:, 0]) > 0.6 * a.shape[1]
    assert np.ptp(m.kpts_query[:, 1]) > 0.6 * a.shape[0]


def test_batches_give_the_same_matches_as_one_by_one(roma_model, images):
    a, b = images
    cands = [b, a, b]
    one = RomaMatcher(roma_config(num_samples=200, batch_size=1), model=roma_model).match_many(a, cands)
    three = RomaMatcher(roma_config(num_samples=200, batch_size=3), model=roma_model).match_many(a, cands)
    for x, y in zip(one, three):
        np.testing.assert_allclose(x.kpts_candidate, y.kpts_candidate, atol=1e-3)


def test_query_vgg_runs_once_however_many_batches(roma_model, images):
    matcher = RomaMatcher(roma_config(num_samples=100, batch_size=1), model=roma_model)
    a, b = images
    query, cands = matcher.prepare(a), [matcher.prepare(c) for c in (b, a, b)]
    calls = []
    original = matcher.completed
    matcher.completed = lambda enc, *args: calls.append(enc.size) or original(enc, *args)
    assert len(matcher.match_prepared(query, cands)) == 3
    assert calls.count(a.shape[:2]) == 2  # the query once (not once per batch) + candidate a


def test_refiners_use_the_dense_correlation_only_while_decoding(roma_model, images, monkeypatch):
    from romatch.models import matcher as romatch_matcher

    from roma_ros.matching import local_corr

    original = romatch_matcher.local_correlation
    radii = []
    dense = local_corr.dense_local_correlation

    def counted(f0, f1, radius, warp):
        radii.append(radius)
        return dense(f0, f1, radius, warp)

    monkeypatch.setattr(local_corr, "dense_local_correlation", counted)
    matcher = RomaMatcher(roma_config(num_samples=100), model=roma_model)
    matcher.match(*images)
    assert radii == [7, 3, 2]  # RoMa's refiners at 1/16, 1/8 and 1/4, all small enough here
    assert romatch_matcher.local_correlation is original


@pytest.mark.parametrize("bad", [dict(coarse_res=100), dict(batch_size=0), dict(upsample_res=90), dict(num_samples=0),
                                 dict(model="roma_v9"), dict(sampler="kde")])
def test_bad_configuration_is_rejected(bad):
    with pytest.raises(ValueError):
        roma_config(**bad).validate()
