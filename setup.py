"""ament_python package definition; also installs with plain pip on machines without ROS."""
from glob import glob

from setuptools import find_packages, setup

package_name = "roma_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*", "bench"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
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
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "match_node = roma_ros.node:main",
            "roma-match = roma_ros.cli:main",
            "roma-demo = roma_ros.demo:main",
            "roma-keyframes = roma_ros.keyframes_cli:main",
        ],
    },
)
