"""roma_ros: visual relocalization for ROS 2 with the RoMa dense matcher.

Layers: ``matching/`` (RoMa and classical matchers), ``geometry`` (verification),
``visualize`` (debug images), ``pipeline`` (query -> result), ``conversions`` (ROS
messages <-> arrays) and ``node`` (the only module that imports rclpy).
"""

__version__ = "0.1.0"
