"""Matchers behind one interface: RoMa / Tiny RoMa (``roma``) and OpenCV SIFT (``classical``)."""
from roma_ros.matching.base import Matches, Matcher, MatcherConfig, WeightsError, build_matcher

__all__ = ["Matches", "Matcher", "MatcherConfig", "WeightsError", "build_matcher"]
