"""Tiny RoMa (XFeat features + small RoMa-style decoder): ~0.5 s a pair on a laptop CPU.

romatch fetches the XFeat network through torch.hub; we build the same layout from
kornia's ``XFeatModel`` instead. Tiny RoMa's checkpoint holds the XFeat weights too
(romatch trains them unfrozen), so loading it fills both parts and nothing is downloaded
besides the checkpoint itself.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from kornia.feature.xfeat import XFeatModel
from romatch.models.model_zoo.roma_models import tiny_roma_v1_model

from roma_ros.matching.base import Matches, MatcherConfig, check_rgb_image
from roma_ros.matching.dense import DenseMatcher, DenseWarp
from roma_ros.matching.weights import load_checkpoints


def build_tiny(config: MatcherConfig, device: str) -> torch.nn.Module:
    if config.random_weights:
        torch.manual_seed(0)
        weights = None
    else:
        (weights,) = load_checkpoints(config.model, config.weights, "", config.allow_download)
    return tiny_roma_v1_model(weights=weights, xfeat=XFeatModel()).to(device).eval()


class TinyRomaMatcher(DenseMatcher):
    """Tiny RoMa behind the matcher interface. ``coarse_res`` is the longer image side
    it works at (Tiny RoMa itself rounds sizes down to multiples of 32)."""

    def __init__(self, config: MatcherConfig, model: torch.nn.Module | None = None) -> None:
        super().__init__(config, model, build_tiny)

    def _tensor(self, rgb: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        h, w = rgb.shape[:2]
        scale = self.config.coarse_res / max(h, w)
        size = (max(32, round(h * scale)), max(32, round(w * scale)))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)

    @torch.inference_mode()
    def dense(self, query: np.ndarray, candidate: np.ndarray) -> DenseWarp:
        warp, certainty = self.model.match(self._tensor(query), self._tensor(candidate))
        return DenseWarp(warp[0], certainty[0])

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        """Tiny RoMa's XFeat features cost little next to its decoder; keep the image."""
        check_rgb_image(rgb, "image")
        return rgb

    def match_prepared(self, query: np.ndarray, candidates: Sequence[np.ndarray]) -> list[Matches]:
        return [self.match(query, c) for c in candidates]

    def describe(self, prepared: np.ndarray) -> None:
        """No global descriptor: Tiny RoMa has no DINOv2 features, so no shortlist."""
        return None

    def match(self, query: np.ndarray, candidate: np.ndarray) -> Matches:
        check_rgb_image(query, "query image")
        check_rgb_image(candidate, "candidate image")
        return self.sample(self.dense(query, candidate), query.shape[:2], candidate.shape[:2])
