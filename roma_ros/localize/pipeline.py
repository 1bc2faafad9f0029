"""One query in, one decision out: match against keyframes, verify, pick the best, and
(when the best keyframe has depth and intrinsics and the query camera is known) its pose.

No ROS here: the node feeds RGB arrays in and turns QueryResult into messages, and
tests and benchmarks drive the same code directly.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from roma_ros.localize.descriptors import DescriptorIndex, exact_top
from roma_ros.localize.features import FeatureLRU
from roma_ros.localize.geometry import Verification, check_ransac_config, verify_fundamental_subset
from roma_ros.localize.prior import planar_positions
from roma_ros.matching.base import Matcher, Matches
from roma_ros.core.transforms import pose_to_matrix
from roma_ros.localize.pose import (
    CameraModel, KeyframePoints, PoseConfig, PoseEstimate, check_depth_std, estimate_pose, estimate_pose_multi,
)
from roma_ros.core.imageio import ImageFileError
from roma_ros.store import Keyframe
from roma_ros.store.cache import FeatureCache
from roma_ros.store.persisted import PersistedDescriptors, as_stored


@dataclass
class DecisionConfig:
    """Verification and acceptance settings; all may change between queries."""

    method: str = "usac_magsac"
    threshold: float = 0.2
    confidence: float = 0.999999
    max_iters: int = 10000
    min_inliers: int = 50
    min_overlap: float = 0.0  # RoMa's mean certainty of the dense warp; 0 = not used
    top_k: int = 5  # keyframes verified per query, by global-descriptor similarity; 0 = all
    max_points: int = 5000  # F fitted on at most this many matches, inliers counted on all; 0 = all

    def validate(self) -> None:
        check_ransac_config(self.method, self.threshold, self.confidence, self.max_iters)
        if self.min_inliers < 0:
            raise ValueError(f"min_inliers={self.min_inliers} must be >= 0")
        if not 0.0 <= self.min_overlap <= 1.0:
            raise ValueError(f"min_overlap={self.min_overlap} must lie in [0, 1]")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 (0 = all keyframes)")
        if self.max_points < 0 or 0 < self.max_points < 8:
            raise ValueError(f"ransac.max_points={self.max_points} must be 0 (all) or at least 8")


@dataclass
class CandidateResult:
    index: int  # position in the keyframe list (keyframe_index)
    matches: Matches
    verification: Verification
    similarity: float | None = None  # global-descriptor cosine similarity (shortlist)

    @property
    def inliers(self) -> int:
        return self.verification.num_inliers if self.verification.verified else 0

    @property
    def score(self) -> float:
        """Inliers weighted by RoMa's overlap estimate: a smooth but wrong warp can fit a
        fundamental matrix with many inliers, yet its certainty stays low."""
        overlap = self.matches.overlap
        return self.inliers * (1.0 if overlap is None else overlap)


def shortlist(descriptors: np.ndarray | DescriptorIndex | None, query: np.ndarray | None, top_k: int,
              count: int, allowed: np.ndarray | None = None) -> tuple[list[int], list[float | None]]:
    """Indices of the top_k of ``count`` keyframes by cosine similarity of unit descriptors
    (a partial sort, or FAISS on a large DescriptorIndex); all of them, in store order, when
    there are no descriptors. ``allowed`` (a mask over the keyframes, from a prior) removes
    keyframes before ranking, so a prior never costs a shortlist place; the allowed ones are
    searched exactly. Rows beyond ``count`` (added since the caller's snapshot) are left out."""
    if allowed is not None:
        candidates = np.flatnonzero(np.asarray(allowed, bool)[:count])
        if descriptors is None or query is None:
            return candidates.tolist(), [None] * len(candidates)
        matrix = descriptors.matrix if isinstance(descriptors, DescriptorIndex) else descriptors
        order, similarity = exact_top(matrix[candidates], query, top_k)
        return candidates[order].tolist(), similarity.astype(float).tolist()
    if descriptors is None or query is None:
        return list(range(count)), [None] * count
    if isinstance(descriptors, DescriptorIndex):
        indices, similarities = descriptors.search(query, top_k)
    else:
        order, similarity = exact_top(descriptors, query, top_k)
        indices, similarities = order.tolist(), similarity.astype(float).tolist()
    kept = [(i, s) for i, s in zip(indices, similarities) if i < count]
    return [i for i, _ in kept], [s for _, s in kept]


# A prior on the keyframes: a mask over them, or a function giving one from their x-y positions
# ((N, 2), NaN without a pose: prior.planar_positions), which the Relocalizer keeps up to date.
Eligible = Sequence[bool] | np.ndarray | Callable[[np.ndarray], Sequence[bool]]


@dataclass
class QueryResult:
    candidates: list[CandidateResult]
    best: CandidateResult | None
    accepted: bool
    reason: str  # why not accepted ("" when accepted)
    timings: dict[str, float] = field(default_factory=dict)
    # The keyframe list the indices refer to (a reload may replace the store's list meanwhile).
    keyframes: list[Keyframe] = field(default_factory=list)
    # The query camera relative to the best keyframe's camera; None when not accepted. When
    # accepted it always says why there is no metric pose (``reason``) or holds one (``ok``).
    pose: PoseEstimate | None = None

    @property
    def latency(self) -> float:
        return sum(self.timings.values())


class Relocalizer:
    """Keeps the keyframes with their global descriptors and answers queries.

    Dense features live in a FeatureLRU of at most ``feature_memory_mb`` (0 = no bound):
    a query touches only its shortlist's, prepared again (from the disk cache where there
    is one) when they were evicted. Thread-safe: the node's worker calls ``process`` while
    services add or reload keyframes.
    """

    VOCABULARY_KEYFRAMES = 500  # a classical vocabulary is learnt from at most this many keyframes

    def __init__(self, matcher: Matcher, decision: DecisionConfig | None = None,
                 pose_config: PoseConfig | None = None, feature_memory_mb: float = 0.0) -> None:
        self.matcher = matcher
        self.decision = decision or DecisionConfig()
        self.decision.validate()
        self.pose_config = pose_config or PoseConfig()
        self.pose_config.validate()
        if not feature_memory_mb >= 0:
            raise ValueError(f"feature_memory_mb={feature_memory_mb} must be >= 0 (0 = no bound)")
        self.feature_budget = int(feature_memory_mb * 2**20)
        self.keyframes: list[Keyframe] = []
        self._positions = planar_positions([])  # aligned with keyframes, for the prior
        self.features = FeatureLRU(self.feature_budget)
        self.cache: FeatureCache | None = None
        self.persisted: PersistedDescriptors | None = None  # the store's descriptor table, if any
        self.skipped: list[str] = []  # keyframes the last set_keyframes could not read, and why
        self._descriptors: DescriptorIndex | None = None
        self._lock = threading.Lock()  # guards the lists
        self._compute = threading.Lock()  # one model call at a time (queries vs. keyframe additions)

    def _prepare(self, keyframe: Keyframe) -> Any:
        if self.cache is None:
            return self.matcher.prepare(keyframe.image)
        return self.cache.prepare(self.matcher, keyframe.image_file, keyframe.image)

    @property
    def _descriptors_matrix(self) -> np.ndarray | None:
        """All keyframes' descriptors (N, D), or None when some keyframe has none."""
        return None if self._descriptors is None else self._descriptors.matrix

    def _describe(self, prepared: Any) -> np.ndarray | None:
        """The matcher's descriptor as the index stores it (float16-rounded, see store/persisted.py),
        so that a keyframe ranks the same before and after a restart."""
        descriptor = self.matcher.describe(prepared)
        return None if descriptor is None else as_stored(descriptor)

    def _describe_all(self, prepared: list[Any]) -> DescriptorIndex | None:
        described = [self._describe(p) for p in prepared]
        if not described or any(d is None for d in described):
            return None
        return DescriptorIndex.of(np.stack(described))

    def _descriptor_key(self) -> str | None:
        key = getattr(self.matcher, "descriptor_key", None)
        return key() if callable(key) else None

    def _use_vocabulary(self, keyframes: list[Keyframe], persisted: PersistedDescriptors | None,
                        fit: Callable[[list[Any]], None]) -> dict[int, Any]:
        """The classical matcher's vocabulary: the map's stored one while it was learnt from
        enough of the map (at least half of it, up to VOCABULARY_KEYFRAMES), else learnt again
        from a sample of keyframes, which are returned prepared (index -> prepared)."""
        wanted = min(self.VOCABULARY_KEYFRAMES, len(keyframes) // 2)
        named = getattr(self.matcher, "vocabulary_key", None)
        key = named() if persisted is not None and callable(named) else None
        stored = persisted.vocabulary(key) if key is not None else None
        if stored is not None and stored[0] >= wanted:
            with contextlib.suppress(ValueError):  # a damaged row: learnt again below
                self.matcher.set_vocabulary(stored[1])
                return {}
        sample: dict[int, Any] = {}
        step = max(1, len(keyframes) // self.VOCABULARY_KEYFRAMES)
        for i in range(0, len(keyframes), step):
            with contextlib.suppress(ImageFileError):  # reported by set_keyframes, where it is skipped
                sample[i] = self._prepare(keyframes[i])
        fit(list(sample.values()))
        if key is not None and self.matcher.vocabulary is not None:
            persisted.save_vocabulary(key, len(sample), self.matcher.vocabulary)
        return sample

    def set_keyframes(self, keyframes: list[Keyframe], cache: FeatureCache | None = None,
                      persisted: PersistedDescriptors | None = None) -> None:
        """Use these keyframes; with a cache, features come from disk where possible. Only
        their descriptors are kept for all; dense features while the budget allows. With
        ``persisted`` (the store's descriptor table), descriptors stored for this matcher are
        read in one query and only the missing ones computed (and stored), so a start costs
        no keyframe preparation once the map has been described."""
        features = FeatureLRU(self.feature_budget)
        fit = getattr(self.matcher, "fit_vocabulary", None)
        # A vocabulary from the map (classical VLAD) changes what describe() gives, so queries
        # wait for the whole reload then; otherwise (RoMa) they run between two keyframes'
        # preparations, against the previous set, and a reload stalls them for one keyframe.
        whole = self._compute if fit is not None else contextlib.nullcontext()
        each = contextlib.nullcontext() if fit is not None else self._compute
        with whole:
            self.cache, self.persisted = cache, persisted
            if persisted is not None:
                persisted.warnings.clear()
            sample = self._use_vocabulary(keyframes, persisted, fit) if fit is not None else {}
            key = self._descriptor_key()
            stored, found = (persisted.load(key, keyframes) if persisted is not None and key is not None
                             else (None, np.zeros(len(keyframes), bool)))
            vectors, sources, undescribed = stored, [], False  # vectors: (N, D), filled in place
            kept: list[Keyframe] = []
            skipped: list[str] = []
            new: list[tuple[Keyframe, np.ndarray]] = []
            for i, keyframe in enumerate(keyframes):
                if found[i] and i not in sample:  # no preparation: dense features come on demand
                    sources.append(i)
                    kept.append(keyframe)
                    continue
                try:  # a lazy keyframe's file may have gone bad since the store checked it
                    with each:
                        prepared = sample.pop(i) if i in sample else self._prepare(keyframe)
                        descriptor = self._describe(prepared)
                except ImageFileError as exc:
                    skipped.append(f"keyframe '{keyframe.name}' skipped: {exc}")
                    continue
                if descriptor is None:
                    undescribed = True
                else:
                    if vectors is None:
                        vectors = np.zeros((len(keyframes), len(descriptor)), np.float32)
                    vectors[i] = descriptor
                    new.append((keyframe, descriptor))
                features.put(len(kept), prepared)
                sources.append(i)
                kept.append(keyframe)
            descriptors = None
            if vectors is not None and kept and not undescribed:  # no copy unless keyframes were skipped
                descriptors = DescriptorIndex.adopt(vectors if len(sources) == len(keyframes) else vectors[sources])
            del vectors, stored
            if persisted is not None and key is not None and new:
                persisted.save(key, new)
        positions = planar_positions(kept)
        with self._lock:  # the swap: queries from here on use the new set
            self.keyframes, self.features, self._descriptors = kept, features, descriptors
            self._positions = positions
            self.skipped = skipped + (persisted.warnings if persisted is not None else [])

    def add_keyframe(self, keyframe: Keyframe) -> int:
        with self._compute:
            prepared = self._prepare(keyframe)
            descriptor = self._describe(prepared)
            fit = getattr(self.matcher, "fit_vocabulary", None)
            refit = None
            if descriptor is None and fit is not None:  # a map too small for a vocabulary so far
                with self._lock:
                    known, features = list(self.keyframes), self.features
                everything = [features.get(i, lambda k=k: self._prepare(k)) for i, k in enumerate(known)]
                fit([*everything, prepared])
                refit = self._describe_all([*everything, prepared])
                if refit is not None and self.persisted is not None and hasattr(self.matcher, "vocabulary_key"):
                    self.persisted.save_vocabulary(self.matcher.vocabulary_key(), len(everything) + 1,
                                                   self.matcher.vocabulary)
                    key = self._descriptor_key()
                    if key is not None:
                        self.persisted.save(key, list(zip([*known, keyframe], refit.matrix)))
            elif descriptor is not None and self.persisted is not None:
                key = self._descriptor_key()
                if key is not None:
                    self.persisted.save(key, [(keyframe, descriptor)])
        with self._lock:
            index = len(self.keyframes)
            self.features.put(index, prepared)
            self._positions = np.vstack([self._positions, planar_positions([keyframe])])
            if refit is not None and len(refit) == index + 1:
                self.keyframes.append(keyframe)
                self._descriptors = refit
                return index
            # The shortlist needs a descriptor for every keyframe (an empty store has none).
            all_described = self._descriptors is not None or not self.keyframes
            self.keyframes.append(keyframe)
            if descriptor is None or not all_described:
                self._descriptors = None
            elif self._descriptors is None:
                self._descriptors = DescriptorIndex.of(np.asarray(descriptor, np.float32)[None])
            else:  # in place, O(d): a query's snapshot ignores rows beyond its keyframe list
                self._descriptors.append(np.asarray(descriptor, np.float32))
            return index

    def set_decision(self, decision: DecisionConfig) -> None:
        decision.validate()
        self.decision = decision

    def set_pose_config(self, config: PoseConfig) -> None:
        config.validate()
        self.pose_config = config

    def process(self, query: np.ndarray, query_camera: CameraModel | None = None,
                eligible: Eligible | None = None) -> QueryResult:
        """Match ``query`` (RGB) against the keyframes; ``query_camera`` (its intrinsics) enables
        the metric pose against an accepted keyframe with depth and intrinsics. ``eligible`` (a
        prior, e.g. "near the robot's estimate"): a boolean mask over the keyframes, or a callable
        that makes one from their x-y positions (see Eligible); only those keyframes are
        shortlisted and verified."""
        with self._lock:
            keyframes, features, decision = list(self.keyframes), self.features, self.decision
            descriptors, pose_config, positions = self._descriptors, self.pose_config, self._positions
        timings: dict[str, float] = {}
        if not keyframes:
            return QueryResult([], None, False, "no keyframes loaded", timings)
        allowed = None
        if eligible is not None:
            allowed = np.asarray(eligible(positions) if callable(eligible) else eligible, bool)
            if allowed.shape != (len(keyframes),):
                raise ValueError(f"eligible mask has shape {allowed.shape}, expected ({len(keyframes)},)")
            if not allowed.any():
                return QueryResult([], None, False, f"no keyframe eligible under the prior (of {len(keyframes)})",
                                   timings, keyframes)
        with self._compute:  # timings start inside: waiting for a keyframe addition is not encoding
            start = time.perf_counter()
            query_prepared = self.matcher.prepare(query)
            timings["encode"] = time.perf_counter() - start
            start = time.perf_counter()
            query_descriptor = None if descriptors is None else self.matcher.describe(query_prepared)
            indices, similarities = shortlist(descriptors, query_descriptor, decision.top_k, len(keyframes), allowed)
            timings["shortlist"] = time.perf_counter() - start
            start = time.perf_counter()
            prepared = [features.get(i, lambda k=keyframes[i]: self._prepare(k)) for i in indices]
            timings["fetch"] = time.perf_counter() - start  # dense features of the shortlist (LRU)
            start = time.perf_counter()
            all_matches = self.matcher.match_prepared(query_prepared, prepared)
            timings["match"] = time.perf_counter() - start
        start = time.perf_counter()
        verifications = verify_all(all_matches, decision)
        candidates = [CandidateResult(i, m, v, sim)
                      for i, sim, m, v in zip(indices, similarities, all_matches, verifications)]
        timings["verify"] = time.perf_counter() - start
        best = max(candidates, key=lambda c: (c.score, c.inliers))
        why = decide(best, decision)
        if why and best.inliers == 0:  # nothing verified: "best" is only the first tried
            why = f"no keyframe verified ({len(candidates)} tried; '{keyframes[best.index].name}': {why})"
        elif why:
            why = f"best keyframe '{keyframes[best.index].name}': {why}"
        result = QueryResult(candidates, best, not why, why, timings, keyframes)
        if result.accepted:
            start = time.perf_counter()
            others = [c for c in candidates if c is not best and not decide(c, decision)]
            result.pose = relative_pose(best, keyframes[best.index], query_camera, pose_config,
                                        [(c, keyframes[c.index]) for c in others])
            timings["pose"] = time.perf_counter() - start
        return result


def keyframe_camera(keyframe: Keyframe) -> CameraModel | None:
    """The keyframe's intrinsics (OpenCV/ROS convention in keyframes.yaml) in our pixel frame."""
    return CameraModel.from_intrinsics(keyframe.intrinsics) if keyframe.intrinsics else None


def keyframe_depth_std(keyframe: Keyframe) -> tuple[float, float] | None:
    """The keyframe's own depth noise (``depth_std: [a, b]`` in keyframes.yaml), None if unset."""
    value = keyframe.extra.get("depth_std")
    if value is None:
        return None
    try:
        a, b = (float(v) for v in value)
        check_depth_std(a, b)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"keyframe '{keyframe.name}': depth_std={value!r} must be [a, b] with "
                         f"a, b >= 0 ({exc})") from None
    return a, b


def relative_pose(best: CandidateResult, keyframe: Keyframe, query_camera: CameraModel | None,
                  config: PoseConfig, others: list[tuple[CandidateResult, Keyframe]] | None = None) -> PoseEstimate:
    """PnP on the accepted candidate's F-inliers; a reason instead where an input is missing
    (no essential-matrix fallback here: the node publishes metric poses only).

    ``others``: further accepted candidates. With ``config.multi_keyframe``, those whose keyframe
    has depth, intrinsics and a pose (as has ``keyframe``) add their F-inliers to one PnP in
    ``keyframe``'s camera frame (as hloc does with covisible database images): more points
    where one keyframe has too few. Only keyframes within MULTI_KEYFRAME_RADIUS_M of
    ``keyframe`` join. The result stays relative to ``keyframe``."""
    missing = [what for what, absent in (("query camera intrinsics (camera_info)", query_camera is None),
                                         (f"depth for keyframe '{keyframe.name}'", keyframe.depth is None),
                                         (f"intrinsics for keyframe '{keyframe.name}'", not keyframe.intrinsics))
               if absent]
    if missing:
        return PoseEstimate(False, "no " + ", no ".join(missing), "none", False, None, None)
    problem = keyframe_camera_problem(keyframe)
    if problem:
        return PoseEstimate(False, problem, "none", False, None, None)
    others = [(c, k) for c, k in (others or []) if not keyframe_camera_problem(k)]
    try:
        return _pnp_over(best, keyframe, query_camera, config, others)
    except ValueError as exc:  # a keyframe's bad depth_std: say so rather than stop the worker
        return PoseEstimate(False, str(exc), "none", False, None, None)


def keyframe_camera_problem(keyframe: Keyframe) -> str:
    """Why the keyframe's intrinsics cannot serve a pose for its image (absurd distortion, a focal
    length under a pixel, ...), or "" when they can."""
    try:
        width, height = keyframe.image_size
        camera = keyframe_camera(keyframe)
        if camera is None:
            return f"no intrinsics for keyframe '{keyframe.name}'"
        camera.validate()
        camera.check_for_image(width, height)
    except ImageFileError as exc:
        return f"keyframe '{keyframe.name}' unreadable: {exc}"
    except ValueError as exc:
        return f"bad intrinsics for keyframe '{keyframe.name}': {exc}"
    return ""


# Multi-keyframe PnP joins only keyframes this close (m) to the best one: covisible keyframes of one
# place are metres apart, while a look-alike elsewhere in the map would pull the pose between the
# two places (RANSAC then keeps whichever has more points, not necessarily the best keyframe's).
MULTI_KEYFRAME_RADIUS_M = 5.0


def _pnp_over(best, keyframe, query_camera, config, others) -> PoseEstimate:
    inl = best.verification.inlier_mask
    extra = [(c, k) for c, k in others if k.posable and c.verification.verified
             and keyframe.pose is not None and _distance(k.pose, keyframe.pose) <= MULTI_KEYFRAME_RADIUS_M]
    if not (config.multi_keyframe and keyframe.pose is not None and extra):
        return estimate_pose(best.matches.kpts_query[inl], best.matches.kpts_candidate[inl], keyframe.depth,
                             keyframe_camera(keyframe), query_camera, config, keyframe_depth_std(keyframe))
    parts = [KeyframePoints(best.matches.kpts_query[inl], best.matches.kpts_candidate[inl], keyframe.depth,
                            keyframe_camera(keyframe), depth_std=keyframe_depth_std(keyframe))]
    to_reference = np.linalg.inv(pose_to_matrix(keyframe.pose))
    for c, k in extra:
        mask = c.verification.inlier_mask
        parts.append(KeyframePoints(c.matches.kpts_query[mask], c.matches.kpts_candidate[mask], k.depth,
                                    keyframe_camera(k), to_reference @ pose_to_matrix(k.pose),
                                    keyframe_depth_std(k)))
    return estimate_pose_multi(parts, query_camera, config)


def _distance(a, b) -> float:
    return float(np.linalg.norm(np.subtract(a[0], b[0])))


def verify_all(all_matches: list[Matches], decision: DecisionConfig) -> list[Verification]:
    """One fundamental-matrix check per candidate, in parallel threads: OpenCV releases
    the GIL, and with weak matches each check can run all max_iters (tens to hundreds
    of ms). On an H200 this took K=10 from 791 to 484 ms per query. The checks start
    after matching: overlapping them with decoding measured slower in the one run that
    tried it (bench/results/gpu-h200-run5-overlap.log)."""

    def verify(m: Matches) -> Verification:
        return verify_fundamental_subset(m.kpts_query, m.kpts_candidate, decision.max_points, method=decision.method,
                                         threshold=decision.threshold, confidence=decision.confidence,
                                         max_iters=decision.max_iters)

    workers = min(len(all_matches), os.cpu_count() or 1)
    if workers <= 1:
        return [verify(m) for m in all_matches]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify") as pool:
        return list(pool.map(verify, all_matches))


def decide(best: CandidateResult, decision: DecisionConfig) -> str:
    """Why the best candidate is not accepted; "" when it is."""
    if not best.verification.verified:
        return best.verification.reason
    if best.inliers < max(decision.min_inliers, 1):
        return f"{best.inliers} inliers < min_inliers {decision.min_inliers}"
    overlap = best.matches.overlap
    if overlap is not None and overlap < decision.min_overlap:
        return f"overlap {overlap:.3f} < min_overlap {decision.min_overlap}"
    return ""
