"""The ROS 2 face of roma_ros: the only package that imports rclpy.

``node`` assembles ``match_node`` from its parts (``inputs``, ``worker``, ``outputs``,
``diagnostics``, ``services``); ``params`` is the parameter table with its rules; ``health`` the
frame accounting and log throttle; ``conversions`` messages <-> arrays; ``rosenv`` the
loopback-only DDS set-up for tests and the demo.
"""
