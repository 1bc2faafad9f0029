"""Matchers behind one interface: RoMa / Tiny RoMa (``roma``, ``tiny``) and OpenCV SIFT
(``classical``), built by name in ``registry``."""
from roma_ros.matching.base import Matches, Matcher, MatcherConfig, WeightsError
from roma_ros.matching.registry import build_matcher

__all__ = ["Matches", "Matcher", "MatcherConfig", "WeightsError", "build_matcher"]
