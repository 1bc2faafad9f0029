"""Environment for DDS that stays on this machine (tests, demo, CI).

Everything here only sets environment variables, so it must run before rclpy
creates its context; it imports nothing from ROS.
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE = "roma_ros"
FASTDDS_PROFILE = "fastdds_localhost.xml"


def share_file(*parts: str) -> Path:
    """A file of the package's share directory: the source checkout when running from it,
    else the installed share (ament index)."""
    source = Path(__file__).resolve().parents[2].joinpath(*parts)
    if source.exists():
        return source
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory(PACKAGE)).joinpath(*parts)


def configure_local_dds(seed: int | None = None, domain_id: int | None = None) -> dict[str, str]:
    """Keep DDS discovery on loopback, in a domain of its own, with the large-sample
    shared-memory profile. Returns the variables it set (for child processes)."""
    if domain_id is None:
        domain_id = 1 + (os.getpid() if seed is None else seed) % 100
    env = {
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "ROS_DOMAIN_ID": str(domain_id),
        "RMW_IMPLEMENTATION": os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp"),
        "FASTDDS_DEFAULT_PROFILES_FILE": str(share_file("config", FASTDDS_PROFILE)),
    }
    os.environ.update(env)
    return env
