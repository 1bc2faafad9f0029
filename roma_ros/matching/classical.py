"""OpenCV SIFT matcher: the offline baseline that needs no weights and no torch.

It gives the pipeline, CLI and tests a real matcher to run anywhere, and a
reference to show how much RoMa gains under large viewpoint change.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from roma_ros.matching.base import Matches, check_rgb_image

# knnMatch with k=2 needs at least two descriptors on each side.
MIN_FEATURES = 2
VLAD_WORDS = 32  # vocabulary size of the global descriptor: 32 x 128 = 4096 floats (16 KB) per keyframe
VOCABULARY_SAMPLE = 50_000  # descriptors k-means sees at most


def root_sift(descriptors: np.ndarray) -> np.ndarray:
    """RootSIFT (Arandjelovic & Zisserman 2012): L1-normalise, square root; Euclidean distance
    on it is the Hellinger kernel on SIFT, which clusters and compares better."""
    data = np.asarray(descriptors, np.float32)
    data = data / np.maximum(data.sum(1, keepdims=True), 1e-12)
    return np.sqrt(data)


def create_sift(num_features: int) -> tuple[cv2.SIFT, bool]:
    """A SIFT detector without OpenCV's 0.25 px keypoint shift where the library can avoid it.

    SIFT doubles the image before its first octave; OpenCV's default doubling shifts every
    keypoint by a quarter pixel (opencv/opencv#23123), the same way in every image, so the
    errors of a match are correlated and the pose covariance is optimistic. OpenCV >= 4.8
    fixes it with `enable_precise_upscale`. Older builds (OpenCV 4.5 on Ubuntu 22.04 / ROS
    Humble) do not know the keyword: they keep the shifted keypoints, as before, and the
    second value is False.
    """
    try:
        return cv2.SIFT_create(nfeatures=num_features, enable_precise_upscale=True), True
    except (TypeError, cv2.error):  # unknown keyword: TypeError, or cv2.error from overload resolution
        return cv2.SIFT_create(nfeatures=num_features), False


@dataclass
class SiftFeatures:
    """What a keyframe needs for matching: keypoints (N, 2) in the Matches convention
    and their descriptors (None when SIFT found nothing)."""

    points: np.ndarray
    descriptors: np.ndarray | None


class ClassicalMatcher:
    """SIFT + Lowe ratio test + mutual nearest-neighbour check.

    `precise_upscale` says whether the detector is free of OpenCV's 0.25 px keypoint shift
    (see `create_sift`).
    """

    name = "classical"
    device = "cpu"

    def __init__(self, num_features: int = 4000, ratio: float = 0.8) -> None:
        if int(num_features) != num_features or num_features <= 0:
            raise ValueError(f"num_features={num_features} must be a positive integer")
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"ratio={ratio} must lie in (0, 1]")
        self.num_features = int(num_features)
        self.ratio = float(ratio)
        self._sift, self.precise_upscale = create_sift(self.num_features)
        self._matcher = cv2.BFMatcher(cv2.NORM_L2)
        self.vocabulary: np.ndarray | None = None  # fit_vocabulary: the map's visual words

    def prepare(self, image: np.ndarray) -> SiftFeatures:
        """Detect SIFT features once; keyframes keep them so each query only detects its own."""
        check_rgb_image(image, "image")
        gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
        keypoints, descriptors = self._sift.detectAndCompute(gray, None)
        # OpenCV puts pixel centres at integers; Matches puts them at +0.5.
        pts = np.array([kp.pt for kp in keypoints], dtype=np.float32).reshape(-1, 2) + 0.5
        return SiftFeatures(pts, descriptors)

    def match(self, query_rgb: np.ndarray, candidate_rgb: np.ndarray) -> Matches:
        """Match two RGB uint8 images; certainty is 1 - d1/d2 of the ratio test, best first."""
        check_rgb_image(query_rgb, "query image")
        check_rgb_image(candidate_rgb, "candidate image")
        return self.match_prepared(self.prepare(query_rgb), [self.prepare(candidate_rgb)])[0]

    def match_prepared(self, query: SiftFeatures, candidates: Sequence[SiftFeatures]) -> list[Matches]:
        """Match prepared query features against prepared candidates."""
        return [self._match_features(query, c) for c in candidates]

    def fit_vocabulary(self, prepared: Sequence[SiftFeatures], seed: int = 0) -> None:
        """Learn the VLAD vocabulary (``VLAD_WORDS`` k-means centres of RootSIFT) from the map's
        own keyframes, so that ``describe`` gives a global descriptor and ``top_k`` applies to
        this matcher too. Too few descriptors (an almost empty map) leave it unfitted."""
        rows = [p.descriptors for p in prepared if p.descriptors is not None and len(p.descriptors)]
        if not rows:
            self.vocabulary = None
            return
        data = root_sift(np.concatenate(rows))
        if len(data) < 4 * VLAD_WORDS:
            self.vocabulary = None
            return
        rng = np.random.default_rng(seed)
        if len(data) > VOCABULARY_SAMPLE:
            data = data[rng.choice(len(data), VOCABULARY_SAMPLE, replace=False)]
        cv2.setRNGSeed(seed)
        criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 1e-4)
        _, _, centres = cv2.kmeans(data, VLAD_WORDS, None, criteria, 1, cv2.KMEANS_PP_CENTERS)
        self.vocabulary = centres.astype(np.float32)

    def vocabulary_key(self) -> str:
        """Under which name the map keeps this matcher's vocabulary (store/persisted.py)."""
        return f"classical-vlad{VLAD_WORDS}-rootsift"

    def set_vocabulary(self, words: np.ndarray) -> None:
        """Use a vocabulary learnt before (read back from the map); a wrong size is refused."""
        words = np.asarray(words, np.float32)
        if words.size != VLAD_WORDS * 128 or not np.isfinite(words).all():
            raise ValueError(f"a vocabulary needs {VLAD_WORDS} x 128 finite floats, got {words.size} values")
        self.vocabulary = words.reshape(VLAD_WORDS, 128).copy()

    def descriptor_key(self) -> str | None:
        """What ``describe`` depends on: the vocabulary (its hash) and the SIFT settings."""
        vocabulary = self.vocabulary
        if vocabulary is None:
            return None
        digest = hashlib.sha1(np.ascontiguousarray(vocabulary, np.float32).tobytes()).hexdigest()[:16]
        return f"{self.vocabulary_key()}-{digest}-n{self.num_features}{'-up' if self.precise_upscale else ''}"

    def describe(self, prepared: SiftFeatures) -> np.ndarray | None:
        """VLAD of the image's RootSIFT descriptors over the map's vocabulary (intra- and
        power-normalised, unit length; 4096 floats); None before a vocabulary is fitted."""
        vocabulary = self.vocabulary
        if vocabulary is None:
            return None
        vlad = np.zeros_like(vocabulary)
        if prepared.descriptors is not None and len(prepared.descriptors):
            data = root_sift(prepared.descriptors)
            distances = (data ** 2).sum(1)[:, None] - 2 * data @ vocabulary.T + (vocabulary ** 2).sum(1)[None]
            words = distances.argmin(1)
            np.add.at(vlad, words, data - vocabulary[words])
            norms = np.linalg.norm(vlad, axis=1, keepdims=True)
            vlad = np.divide(vlad, norms, out=np.zeros_like(vlad), where=norms > 0)
        flat = np.sign(vlad) * np.sqrt(np.abs(vlad))
        norm = float(np.linalg.norm(flat))
        return (flat / norm if norm > 0 else flat).ravel().astype(np.float32)

    def _match_features(self, query: SiftFeatures, candidate: SiftFeatures) -> Matches:
        """Each (query point, candidate point) pair appears once."""
        pts_q, desc_q = query.points, query.descriptors
        pts_c, desc_c = candidate.points, candidate.descriptors
        if desc_q is None or desc_c is None or len(pts_q) < MIN_FEATURES or len(pts_c) < MIN_FEATURES:
            return Matches.empty()

        forward = self._matcher.knnMatch(desc_q, desc_c, k=2)
        backward = self._matcher.match(desc_c, desc_q)
        best_back = np.full(len(pts_c), -1, dtype=np.int64)
        for m in backward:
            best_back[m.queryIdx] = m.trainIdx

        idx_q, idx_c, certainty = [], [], []
        for pair in forward:
            if len(pair) < 2:
                continue
            best, second = pair
            if best.distance >= self.ratio * second.distance or best_back[best.trainIdx] != best.queryIdx:
                continue
            idx_q.append(best.queryIdx)
            idx_c.append(best.trainIdx)
            certainty.append(1.0 - best.distance / second.distance if second.distance > 0 else 1.0)
        if not idx_q:
            return Matches.empty()
        cert = np.clip(np.asarray(certainty, dtype=np.float32), 0.0, 1.0)
        order = np.argsort(-cert, kind="stable")
        kq, kc, cert = pts_q[idx_q][order], pts_c[idx_c][order], cert[order]
        # SIFT repeats a location once per dominant orientation; such twins would match
        # each other and count twice as inliers, so keep only the most certain copy.
        _, first = np.unique(np.concatenate([kq, kc], axis=1), axis=0, return_index=True)
        keep = np.sort(first)
        return Matches(kq[keep], kc[keep], cert[keep])
