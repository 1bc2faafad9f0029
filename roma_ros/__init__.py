"""roma_ros: visual relocalization for ROS 2 with the RoMa dense matcher.

Layers, bottom to top (imports point down; test/test_layers.py checks it): ``core`` (camera
model, transforms, file I/O), ``matching`` (RoMa, Tiny RoMa, SIFT), ``store`` (the keyframe map),
``localize`` (F check, pose, the Relocalizer), ``mapping`` (recordings, keyframe selection,
evaluation), then ``ros`` (the only rclpy) and ``cli`` side by side, and ``demo`` on top.
"""

__version__ = "0.1.0"
