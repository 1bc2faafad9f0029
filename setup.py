"""ament_python package definition; also installs with plain pip on machines without ROS.

Every install (colcon, colcon --symlink-install, pip) puts the console scripts in <prefix>/bin,
on PATH, and a small wrapper of each in <prefix>/lib/roma_ros, where `ros2 run` and
`ros2 launch` look (libexec/). A wheel can only put scripts with the right interpreter in bin/.
"""
from glob import glob

from setuptools import find_packages, setup

package_name = "roma_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*", "bench"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("lib/" + package_name, sorted(glob("libexec/*"))),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.xml")),
        ("share/" + package_name + "/rviz", glob("rviz/*.rviz")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="roma_ros developers",
    maintainer_email="roma-ros@example.com",
    description="Visual relocalization for ROS 2 with the RoMa dense matcher",
    license="MIT",
    entry_points={
        "console_scripts": [
            "match_node = roma_ros.ros.node:main",
            "roma-match = roma_ros.cli.match:main",
            "roma-demo = roma_ros.demo.run:main",
            "roma-keyframes = roma_ros.cli.keyframes:main",
            "roma-eval = roma_ros.cli.eval:main",
        ],
    },
)
