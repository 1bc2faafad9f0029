"""The bottom layer: camera model, rigid transforms and atomic file I/O, used by every other layer.

Nothing here knows about matchers, keyframes or ROS.
"""
