"""What RoMa and Tiny RoMa share: model set-up on a device and turning a dense warp
into seeded, pixel-space correspondences."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from roma_ros.matching.base import Matches, MatcherConfig
from roma_ros.matching.device import configure_backend, resolve_device
from roma_ros.matching.sampling import normalized_to_pixels, sample_balanced


@dataclass
class DenseWarp:
    """romatch's output for one pair: warp (H, W or 2W, 4) and certainty (H, W or 2W)."""

    warp: torch.Tensor
    certainty: torch.Tensor


class DenseMatcher:
    """Base of the romatch-backed matchers: config, device, network and sampler."""

    def __init__(self, config: MatcherConfig, model: torch.nn.Module | None,
                 build: Callable[[MatcherConfig, str], torch.nn.Module]) -> None:
        config.validate()
        self.config = config
        self.device = resolve_device(config.device)
        configure_backend(self.device)
        self.name = config.model
        self.model = model if model is not None else build(config, self.device)
        self._generator = torch.Generator(device=self.device)

    def sample(self, dense: DenseWarp, query_hw: tuple[int, int], candidate_hw: tuple[int, int]) -> Matches:
        """Sample correspondences (reseeded per pair, so results are reproducible) and map
        them to pixels of images of the given sizes."""
        cfg = self.config
        if cfg.seed is not None:
            self._generator.manual_seed(cfg.seed)
        if cfg.sampler == "romatch":
            matches, cert = self.model.sample(dense.warp, dense.certainty, num=cfg.num_samples)
        else:
            matches, cert = sample_balanced(dense.warp, dense.certainty, cfg.num_samples, cfg.sample_thresh,
                                            self._generator)
        kq = normalized_to_pixels(matches[:, :2].float(), *query_hw)
        kc = normalized_to_pixels(matches[:, 2:].float(), *candidate_hw)
        return Matches(kq.cpu().numpy(), kc.cpu().numpy(), cert.float().cpu().numpy(),
                       overlap=float(dense.certainty.float().mean()))
