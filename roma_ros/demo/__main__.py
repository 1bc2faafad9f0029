"""``python -m roma_ros.demo``: the demo (``make demo``)."""
from roma_ros.demo.run import main

main()
