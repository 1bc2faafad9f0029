"""Test-session set-up: DDS on loopback with a private domain, offline torch, shared models.

The environment is set here, before anything imports rclpy, so no test ever sends DDS
traffic off this machine or downloads weights.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from roma_ros.ros.rosenv import configure_local_dds

configure_local_dds(seed=os.getpid())
os.environ.setdefault("TORCH_HOME", str(Path(__file__).resolve().parent / ".torch_home_unused"))

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from roma_ros.matching.base import MatcherConfig  # noqa: E402

# Small resolutions keep random-weight RoMa at a few seconds a pair on 2 CPU cores.
TEST_COARSE = 112
TEST_UPSAMPLE = 224


def roma_config(**overrides) -> MatcherConfig:
    base = dict(model="roma_outdoor", device="cpu", coarse_res=TEST_COARSE, upsample_res=0,
                random_weights=True, num_samples=2000, allow_download=False)
    base.update(overrides)
    return MatcherConfig(**base)


@pytest.fixture(scope="session")
def roma_model():
    """One random-weight RoMa network for the whole session (~16 s, ~4 GB to build)."""
    from roma_ros.matching.roma import build_roma

    return build_roma(roma_config(), "cpu")


@pytest.fixture(scope="session")
def tiny_model():
    from roma_ros.matching.tiny import build_tiny

    return build_tiny(roma_config(model="tiny_roma_outdoor"), "cpu")


@pytest.fixture(scope="session")
def ros():
    """rclpy initialised once per test session (DDS already confined to loopback above)."""
    import rclpy

    rclpy.init()
    yield rclpy
    rclpy.try_shutdown()
