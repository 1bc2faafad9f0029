"""Start roma_ros's matcher node.

    ros2 launch roma_ros match.launch.py image:=/camera/image_raw keyframes_dir:=~/keyframes

Arguments left empty (keyframes_dir, model, device) keep the params file's value; only non-empty
ones are passed on as overrides. Works on Humble, Jazzy and Kilted.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

# Launch arguments that override a parameter of the params file when given (non-empty).
OVERRIDES = {
    "keyframes_dir": "folder of keyframe images (+ optional keyframes.yaml)",
    "model": "roma_outdoor | roma_indoor | tiny_roma_outdoor | classical",
    "device": "auto | cpu | cuda | cuda:N",
}


def _matcher_node(context):
    def arg(name):
        return LaunchConfiguration(name).perform(context).strip()

    image = arg("image").rstrip("/") or "image"
    # Plain str values stay strings (launch_ros YAML-quotes them), even "1" or "true".
    overrides = {name: arg(name) for name in OVERRIDES if arg(name)}
    parameters = [arg("params_file")] + ([overrides] if overrides else [])
    return [
        Node(
            package="roma_ros",
            executable="match_node",
            name="roma_matcher",
            namespace=arg("namespace"),
            parameters=parameters,
            remappings=[("image", image), ("image/compressed", image + "/compressed")],
            output="screen",
        )
    ]


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("roma_ros"), "config", "match.yaml")
    arguments = [
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="parameters of the node (YAML)"),
        DeclareLaunchArgument("image", default_value="/camera/image_raw",
                              description="camera image topic (with image_transport:=compressed, "
                                          "<image>/compressed is used)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
    ]
    arguments += [
        DeclareLaunchArgument(name, default_value="",
                              description=f"{text}; empty: keep the params file's value")
        for name, text in OVERRIDES.items()
    ]
    return LaunchDescription(arguments + [OpaqueFunction(function=_matcher_node)])
