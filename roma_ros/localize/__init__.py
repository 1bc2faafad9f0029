"""From matches to an answer: the F check (``geometry``), the metric pose (``pose``), the
relocalizer that turns one query into a decision (``pipeline``) and its debug image (``visualize``).

Plain numpy / OpenCV / torch; no ROS. Uses ``matching`` and ``store``.
"""
