"""The map side: pairing streams by stamp (``sync``), reading recordings, selecting keyframes and
evaluating a recording against ground truth. No ROS client library: bags are read with ``rosbags``.
"""
