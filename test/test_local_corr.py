"""Our dense local correlation against romatch's own (the refiners' input must not move)."""
from __future__ import annotations

import pytest
import torch
from romatch.utils.local_correlation import local_correlation as romatch_local_correlation

from roma_ros.matching import local_corr


def inputs(b: int, c: int, h: int, w: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    f0 = torch.randn(b, c, h, w, generator=gen)
    f1 = torch.randn(b, c, h, w, generator=gen).contiguous(memory_format=torch.channels_last)
    # Matches inside, near and far outside the image, plus some exactly on pixel centres
    # (bilinear fraction 0: the floor must not jump a pixel).
    warp = torch.rand(b, 2, h, w, generator=gen) * 3.0 - 1.5
    centres_x = (2 * torch.randint(0, w, (h, w), generator=gen) + 1) / w - 1
    centres_y = (2 * torch.randint(0, h, (h, w), generator=gen) + 1) / h - 1
    warp[0, 0, : h // 2], warp[0, 1, : h // 2] = centres_x[: h // 2], centres_y[: h // 2]
    return f0, f1, warp


@pytest.mark.parametrize("radius", [1, 2, 3])
@pytest.mark.parametrize("hw", [(6, 9), (11, 7)])
def test_dense_equals_romatch(radius, hw):
    f0, f1, warp = inputs(3, 16, *hw, seed=radius)
    expected = romatch_local_correlation(f0, f1, radius, warp, use_custom_corr=False)
    got = local_corr.dense_local_correlation(f0, f1, radius, warp)
    assert got.shape == expected.shape == (3, (2 * radius + 1) ** 2, *hw)
    assert expected.abs().max() > 1  # the comparison is not between zeros
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)


def test_chunked_matrix_gives_the_same_result(monkeypatch):
    f0, f1, warp = inputs(2, 8, 9, 10)
    whole = local_corr.dense_local_correlation(f0, f1, 2, warp)
    monkeypatch.setattr(local_corr, "CHUNK_ELEMENTS", 2 * 7 * 90)  # 7-row slices of both (90 x 90) matrices
    torch.testing.assert_close(local_corr.dense_local_correlation(f0, f1, 2, warp), whole)


def test_non_finite_matches_read_padding():
    f0, f1, warp = inputs(1, 8, 5, 6)
    warp[0, :, 0, 0] = float("nan")
    warp[0, 0, 1, 1] = float("inf")
    got = local_corr.dense_local_correlation(f0, f1, 1, warp)
    assert torch.isfinite(got).all()
    assert not got[0, :, 0, 0].any() and not got[0, :, 1, 1].any()


def test_half_precision_keeps_the_matrix_for_larger_images():
    # 140 x 140 with K = 25 (RoMa's scale 4 at 560): lookups win in fp32, tensor cores in bf16.
    assert not local_corr.use_dense(140, 140, 2, torch.float32)
    assert local_corr.use_dense(140, 140, 2, torch.bfloat16)
    assert not local_corr.use_dense(216, 216, 2, torch.bfloat16)


def test_large_images_fall_back_to_romatch(monkeypatch):
    calls = []
    monkeypatch.setattr(local_corr, "romatch_local_correlation", lambda *a, **k: calls.append(a[0].shape))
    f0, f1, warp = inputs(1, 4, 8, 8)
    local_corr.local_correlation(f0, f1, 1, warp, use_custom_corr=False)
    assert not calls
    monkeypatch.setattr(local_corr, "DENSE_MAX_PIXELS_PER_SAMPLE", 1)  # 64 pixels > 1 x 9
    local_corr.local_correlation(f0, f1, 1, warp, use_custom_corr=False)
    assert calls == [f0.shape]


def test_fused_kernel_takes_large_maps_where_the_refiner_allows_it(monkeypatch):
    assert not local_corr.use_fused(40, 40, 7, torch.float32)  # RoMa's 1/16 refiner: dense is 6x faster
    assert local_corr.use_fused(140, 140, 2, torch.bfloat16) and not local_corr.use_fused(108, 108, 3, torch.bfloat16)
    calls = []
    monkeypatch.setattr(local_corr, "romatch_local_correlation", lambda *a, **k: calls.append(k["use_custom_corr"]))
    monkeypatch.setattr(local_corr, "FUSED_MIN_PIXELS_PER_SAMPLE", 4)  # 64 pixels > 4 x 9: the kernel's size
    f0, f1, warp = inputs(1, 4, 8, 8)
    local_corr.local_correlation(f0, f1, 1, warp, use_custom_corr=True)
    assert calls == [True]
    local_corr.local_correlation(f0, f1, 1, warp, use_custom_corr=False)  # kernel not installed: ours
    assert calls == [True]


def test_romatch_is_restored_after_decoding():
    from romatch.models import matcher

    with local_corr.dense_correlation_in_romatch():
        with local_corr.dense_correlation_in_romatch():
            assert matcher.local_correlation is local_corr.local_correlation
        assert matcher.local_correlation is local_corr.local_correlation
    assert matcher.local_correlation is romatch_local_correlation


@pytest.fixture
def kernel_path(tmp_path, monkeypatch):
    """An empty folder first on sys.path, with any imported ``local_corr`` forgotten after."""
    import importlib
    import sys

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "local_corr", raising=False)
    yield tmp_path
    sys.modules.pop("local_corr", None)
    importlib.invalidate_caches()


def fake_kernel_package(root, init: str, with_compiled: bool = True):
    """The shape the ``fused-local-corr`` wheel installs: local_corr/__init__.py + _C<suffix>."""
    import importlib
    import importlib.machinery

    package = root / "local_corr"
    package.mkdir()
    (package / "__init__.py").write_text(init)
    if with_compiled:
        (package / ("_C" + importlib.machinery.EXTENSION_SUFFIXES[0])).write_bytes(b"")
    importlib.invalidate_caches()


def test_fused_kernel_package_is_detected(kernel_path):
    from roma_ros.matching.roma import has_fused_correlation

    assert not has_fused_correlation()  # nothing installed here
    fake_kernel_package(kernel_path, "def local_corr(*args, **kwargs):\n    return None\n")
    assert has_fused_correlation()


@pytest.mark.parametrize("init, with_compiled", [
    ("def local_corr(*args, **kwargs):\n    return None\n", False),  # no compiled _C: not the kernel
    ("raise ImportError('undefined symbol: built for another torch')\n", True),  # wheel for another torch
    ("x = 1\n", True),  # no local_corr function for romatch to call
])
def test_broken_or_foreign_kernel_packages_are_rejected(kernel_path, init, with_compiled):
    from roma_ros.matching.roma import has_fused_correlation

    fake_kernel_package(kernel_path, init, with_compiled)
    assert not has_fused_correlation()


def test_a_stray_local_corr_script_is_neither_the_kernel_nor_run(kernel_path):
    import importlib

    from roma_ros.matching.roma import has_fused_correlation

    marker = kernel_path / "ran"
    (kernel_path / "local_corr.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef local_corr(): pass\n")
    importlib.invalidate_caches()
    assert not has_fused_correlation()
    assert not marker.exists()
