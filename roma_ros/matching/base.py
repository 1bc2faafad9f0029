"""What every matcher returns and how one is built from a name.

A matcher takes two RGB uint8 images of any size and returns correspondences in
pixels of those ORIGINAL images, so callers never have to know the model's
internal resolution.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

MODEL_NAMES = ("roma_outdoor", "roma_indoor", "tiny_roma_outdoor", "classical")


class WeightsError(RuntimeError):
    """Model weights are missing or unreadable; the message says where to get them."""


@dataclass
class Matches:
    """Sampled correspondences between a query and a candidate image.

    ``kpts_query`` and ``kpts_candidate`` are (N, 2) float32 pixel coordinates
    (x right, y down, pixel centres at +0.5) in the original images;
    ``certainty`` is (N,) float32 in [0, 1].
    """

    kpts_query: np.ndarray
    kpts_candidate: np.ndarray
    certainty: np.ndarray
    # Mean certainty of the dense warp before sampling: an overlap estimate (RoMa only).
    overlap: float | None = None

    def __post_init__(self) -> None:
        self.kpts_query = np.asarray(self.kpts_query, dtype=np.float32).reshape(-1, 2)
        self.kpts_candidate = np.asarray(self.kpts_candidate, dtype=np.float32).reshape(-1, 2)
        self.certainty = np.asarray(self.certainty, dtype=np.float32).reshape(-1)
        n = len(self.kpts_query)
        if len(self.kpts_candidate) != n or len(self.certainty) != n:
            raise ValueError(
                f"Matches arrays differ in length: {n}, {len(self.kpts_candidate)}, {len(self.certainty)}"
            )

    def __len__(self) -> int:
        return len(self.kpts_query)

    @classmethod
    def empty(cls) -> "Matches":
        return cls(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0))

    def subset(self, mask: np.ndarray) -> "Matches":
        return Matches(self.kpts_query[mask], self.kpts_candidate[mask], self.certainty[mask], self.overlap)


@dataclass
class MatcherConfig:
    """Everything needed to build a matcher; mirrors the node's parameters and CLI options."""

    model: str = "roma_outdoor"
    weights: str = ""  # RoMa / Tiny RoMa checkpoint; empty: torch hub cache, then the official URL
    dinov2_weights: str = ""  # DINOv2 ViT-L/14 checkpoint; same rule
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    coarse_res: int = 560  # multiple of 14; Tiny RoMa: longer image side
    upsample_res: int = 864  # multiple of 8; 0 disables the high-resolution refinement
    symmetric: bool = True
    precision: str = "auto"  # auto: bf16/fp16 mixed precision on GPU, fp32 on CPU | fp32
    num_samples: int = 10000
    sample_thresh: float = 0.05  # certainty above which all matches count as equally good
    sampler: str = "grid"  # grid (fast, ours) | romatch (romatch's KDE-balanced sampler)
    batch_size: int = 8  # keyframes decoded together (bounded by GPU memory)
    keep_vgg: bool = False  # keep keyframes' projected VGG decoder inputs: faster queries, ~65 MB+ per keyframe
    seed: int | None = 0  # sampling seed per pair (reproducible results); None: random
    resize_to_model: bool = False  # RoMa demo habit: report pixels of images resized to the output res
    allow_download: bool = True  # fetch missing weights from the official URLs
    random_weights: bool = False  # tests and benchmarks only: same architecture, random weights
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.model not in MODEL_NAMES:
            raise ValueError(f"unknown model '{self.model}': choose one of {', '.join(MODEL_NAMES)}")
        if self.coarse_res <= 0 or self.coarse_res % 14:
            raise ValueError(f"coarse_res={self.coarse_res} must be a positive multiple of 14 (DINOv2 patch size)")
        # The upsampling pass runs VGG only (no 14-px patches), so RoMa's own default 864 is valid.
        if self.upsample_res < 0 or self.upsample_res % 8:
            raise ValueError(f"upsample_res={self.upsample_res} must be 0 (off) or a positive multiple of 8")
        if self.upsample_res and self.upsample_res < self.coarse_res:
            raise ValueError(f"upsample_res={self.upsample_res} must be >= coarse_res={self.coarse_res} (or 0)")
        if self.precision not in ("auto", "fp32"):
            raise ValueError(f"precision '{self.precision}' unknown: choose auto or fp32")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size={self.batch_size} must be positive")
        if self.num_samples <= 0:
            raise ValueError(f"num_samples={self.num_samples} must be positive")
        if self.resize_to_model and not self.model.startswith("roma_"):
            raise ValueError("resize_to_model applies to roma_outdoor / roma_indoor only")
        if self.sampler not in ("grid", "romatch"):
            raise ValueError(f"sampler '{self.sampler}' unknown: choose grid or romatch")


def check_rgb_image(image: np.ndarray, what: str) -> None:
    """Raise ValueError unless ``image`` is a non-empty (H, W, 3) uint8 array."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{what} must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{what} must have shape (H, W, 3) (RGB), got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{what} is empty: shape {image.shape}")


class Matcher(Protocol):
    """The interface the pipeline, CLI and node use.

    ``prepare`` computes what an image contributes to every match (RoMa: DINOv2
    features; SIFT: keypoints and descriptors), once per keyframe and once per query;
    ``match_prepared`` matches a prepared query against many prepared keyframes.
    """

    name: str
    device: str

    def prepare(self, image: np.ndarray) -> Any:
        """Per-keyframe work, done once."""
        ...

    def match_prepared(self, query: Any, candidates: Sequence[Any]) -> list[Matches]:
        """Match a prepared query against prepared candidates, one Matches each."""
        ...

    def describe(self, prepared: Any) -> np.ndarray | None:
        """A unit-length global descriptor for the shortlist, or None (no shortlist)."""
        ...

    def match(self, query: np.ndarray, candidate: np.ndarray) -> Matches:
        """Match two RGB uint8 images (H, W, 3) and return sampled correspondences."""
        ...
