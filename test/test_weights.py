"""Missing, misplaced and corrupt checkpoints give one actionable error, never a download."""
from __future__ import annotations

import pytest
import torch

from roma_ros.matching.base import MatcherConfig, WeightsError
from roma_ros.matching.registry import build_matcher
from roma_ros.matching.weights import URLS, load_checkpoints


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints"


def test_missing_weights_name_both_files_places_and_urls(empty_hub):
    with pytest.raises(WeightsError) as err:
        build_matcher(MatcherConfig(model="roma_outdoor", device="cpu", allow_download=False))
    text = str(err.value)
    for name in ("roma_outdoor.pth", "dinov2_vitl14_pretrain.pth"):
        assert name in text and URLS[name] in text
    assert str(empty_hub) in text
    assert "classical" in text  # the way to run without weights


def test_failed_download_is_reported_not_raised_raw(empty_hub, monkeypatch):
    def offline(url, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsError, match="download failed: network unreachable"):
        load_checkpoints("roma_indoor", allow_download=True)


def test_given_path_that_does_not_exist(tmp_path, empty_hub):
    missing = tmp_path / "nowhere" / "roma.pth"
    with pytest.raises(WeightsError) as err:
        load_checkpoints("tiny_roma_outdoor", weights=str(missing), allow_download=False)
    assert str(missing) in str(err.value) and "tiny_roma_v1_outdoor.pth" in str(err.value)


def test_corrupt_checkpoint(tmp_path, empty_hub):
    bad = tmp_path / "roma_outdoor.pth"
    bad.write_bytes(b"not a checkpoint")
    dino = tmp_path / "dino.pth"
    torch.save({"w": torch.zeros(1)}, dino)
    with pytest.raises(WeightsError, match="could not read checkpoint"):
        load_checkpoints("roma_outdoor", weights=str(bad), dinov2_weights=str(dino), allow_download=False)


def test_checkpoints_found_in_hub_cache(empty_hub):
    empty_hub.mkdir(parents=True)
    torch.save({"a": torch.ones(2)}, empty_hub / "tiny_roma_v1_outdoor.pth")
    (sd,) = load_checkpoints("tiny_roma_outdoor", allow_download=False)
    assert torch.equal(sd["a"], torch.ones(2))
