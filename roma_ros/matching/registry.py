"""Matchers by name: ``build_matcher`` imports only the module of the model asked for.

The table names each matcher by module and class, so ``base`` never imports a concrete matcher
(they import ``base``), and asking for ``classical`` never loads torch.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from roma_ros.matching.base import MODEL_NAMES, Matcher, MatcherConfig


def _classical(cls: type, config: MatcherConfig) -> Matcher:
    return cls(num_features=config.extra.get("num_features", 4000))


def _from_config(cls: type, config: MatcherConfig) -> Matcher:
    return cls(config)


# model name -> (module, class, how to construct it from a MatcherConfig)
MATCHERS: dict[str, tuple[str, str, Callable[[Any, MatcherConfig], Matcher]]] = {
    "classical": ("roma_ros.matching.classical", "ClassicalMatcher", _classical),
    "tiny_roma_outdoor": ("roma_ros.matching.tiny", "TinyRomaMatcher", _from_config),
    "roma_outdoor": ("roma_ros.matching.roma", "RomaMatcher", _from_config),
    "roma_indoor": ("roma_ros.matching.roma", "RomaMatcher", _from_config),
}
assert set(MATCHERS) == set(MODEL_NAMES), "every model name needs a registry entry"


def build_matcher(config: MatcherConfig) -> Matcher:
    """Build the matcher named by ``config.model`` (imports torch only for RoMa models)."""
    config.validate()
    module, name, construct = MATCHERS[config.model]
    return construct(getattr(importlib.import_module(module), name), config)
