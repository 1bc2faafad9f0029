"""One query in, one decision out: match against keyframes, verify, pick the best.

No ROS here: the node feeds RGB arrays in and turns QueryResult into messages, and
tests and benchmarks drive the same code directly.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from roma_ros.feature_cache import FeatureCache
from roma_ros.geometry import Verification, check_ransac_config, verify_fundamental
from roma_ros.keyframes import Keyframe
from roma_ros.matching.base import Matcher, Matches


@dataclass
class DecisionConfig:
    """Verification and acceptance settings; all may change between queries."""

    method: str = "usac_magsac"
    threshold: float = 0.2
    confidence: float = 0.999999
    max_iters: int = 10000
    min_inliers: int = 50

    def validate(self) -> None:
        check_ransac_config(self.method, self.threshold, self.confidence, self.max_iters)
        if self.min_inliers < 0:
            raise ValueError(f"min_inliers={self.min_inliers} must be >= 0")


@dataclass
class CandidateResult:
    index: int  # position in the keyframe list (keyframe_index)
    matches: Matches
    verification: Verification

    @property
    def inliers(self) -> int:
        return self.verification.num_inliers if self.verification.verified else 0


@dataclass
class QueryResult:
    candidates: list[CandidateResult]
    best: CandidateResult | None
    accepted: bool
    reason: str  # why not accepted ("" when accepted)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def latency(self) -> float:
        return sum(self.timings.values())


class Relocalizer:
    """Keeps the keyframes with their prepared features and answers queries.

    Thread-safe: the node's worker calls ``process`` while services add or reload
    keyframes.
    """

    def __init__(self, matcher: Matcher, decision: DecisionConfig | None = None) -> None:
        self.matcher = matcher
        self.decision = decision or DecisionConfig()
        self.decision.validate()
        self.keyframes: list[Keyframe] = []
        self._prepared: list[Any] = []
        self.cache: FeatureCache | None = None
        self._lock = threading.Lock()  # guards the lists
        self._compute = threading.Lock()  # one model call at a time (queries vs. keyframe additions)

    def _prepare(self, keyframe: Keyframe) -> Any:
        if self.cache is None:
            return self.matcher.prepare(keyframe.image)
        return self.cache.prepare(self.matcher, keyframe.image_file, keyframe.image)

    def set_keyframes(self, keyframes: list[Keyframe], cache: FeatureCache | None = None) -> None:
        """Use these keyframes; with a cache, features come from disk where possible."""
        with self._compute:
            self.cache = cache
            prepared = [self._prepare(k) for k in keyframes]
        with self._lock:
            self.keyframes, self._prepared = list(keyframes), prepared

    def add_keyframe(self, keyframe: Keyframe) -> int:
        with self._compute:
            prepared = self._prepare(keyframe)
        with self._lock:
            self.keyframes.append(keyframe)
            self._prepared.append(prepared)
            return len(self.keyframes) - 1

    def set_decision(self, decision: DecisionConfig) -> None:
        decision.validate()
        self.decision = decision

    def process(self, query: np.ndarray) -> QueryResult:
        with self._lock:
            keyframes, prepared, decision = list(self.keyframes), list(self._prepared), self.decision
        timings: dict[str, float] = {}
        if not keyframes:
            return QueryResult([], None, False, "no keyframes loaded", timings)
        start = time.perf_counter()
        with self._compute:
            all_matches = self.matcher.match_prepared(query, prepared)
        timings["match"] = time.perf_counter() - start
        start = time.perf_counter()
        candidates = [
            CandidateResult(i, m, verify_fundamental(
                m.kpts_query, m.kpts_candidate, method=decision.method, threshold=decision.threshold,
                confidence=decision.confidence, max_iters=decision.max_iters))
            for i, m in enumerate(all_matches)
        ]
        timings["verify"] = time.perf_counter() - start
        best = max(candidates, key=lambda c: c.inliers)
        if best.inliers >= max(decision.min_inliers, 1):
            return QueryResult(candidates, best, True, "", timings)
        why = best.verification.reason or f"{best.inliers} inliers < min_inliers {decision.min_inliers}"
        return QueryResult(candidates, best, False, f"best keyframe '{keyframes[best.index].name}': {why}", timings)
