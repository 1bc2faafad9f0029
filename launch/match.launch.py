"""Start roma_ros's matcher node.

    ros2 launch roma_ros match.launch.py image:=camera/image_raw keyframes_dir:=~/keyframes
    ros2 launch roma_ros match.launch.py namespace:=robot1 model:=classical use_sim_time:=true
    ros2 service call /roma_matcher/relocalize std_srvs/srv/Trigger   # where am I? (on_demand mode)

Topics are relative, so `namespace` puts the node and its input under it (robot1/camera/image_raw).
Arguments left empty (keyframes_dir, model, device) keep the params file's value; only non-empty
ones are passed on as overrides. The node is a plain action, so `ros2 launch --print` shows it.
Works on Humble, Jazzy and Kilted. match_node is a lifecycle node; with autostart (the default)
it configures and activates itself; under nav2's lifecycle_manager set autostart: false
(docs/nav2.md).
"""
import os
import tempfile

import yaml
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription, Substitution
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

# Launch arguments that override a parameter of the params file when given (non-empty).
OVERRIDES = {
    "keyframes_dir": "folder of keyframe images (+ optional keyframes.yaml)",
    "model": "roma_outdoor | roma_indoor | tiny_roma_outdoor | classical",
    "device": "auto | cpu | cuda | cuda:N",
}


class NonEmptyOverrides(Substitution):
    """The path of a parameters file that holds those of ``names`` whose launch argument is not
    empty. A ``{name: LaunchConfiguration(name)}`` dict would pass an empty value on too, and
    so replace the params file's value with ""."""

    def __init__(self, names):
        super().__init__()
        self.names = tuple(names)

    def describe(self):
        return f"NonEmptyOverrides({', '.join(self.names)})"

    def perform(self, context):
        given = {name: context.launch_configurations.get(name, "").strip() for name in self.names}
        # Plain str values stay strings (YAML-quoted), even "1" or "true".
        parameters = {"/**": {"ros__parameters": {k: v for k, v in given.items() if v}}}
        with tempfile.NamedTemporaryFile("w", prefix="roma_ros_launch_", suffix=".yaml",
                                         delete=False) as f:
            yaml.safe_dump(parameters, f)
        return f.name


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("roma_ros"), "config", "match.yaml")
    image = LaunchConfiguration("image")
    arguments = [
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="parameters of the node (YAML)"),
        DeclareLaunchArgument("image", default_value="camera/image_raw",
                              description="camera image topic, relative to the namespace unless it "
                                          "starts with '/' (with image_transport:=compressed, "
                                          "<image>/compressed is used); for a rectified image "
                                          "(camera/image_rect) set camera_info_rectified: true in the "
                                          "params file, so the pose uses camera_info P and no distortion"),
        DeclareLaunchArgument("camera_info", default_value="camera/camera_info",
                              description="the camera's CameraInfo topic (query intrinsics for the pose)"),
        DeclareLaunchArgument("depth", default_value="camera/depth_registered/image_raw",
                              description="depth registered to the camera image (16UC1 mm or 32FC1 m), "
                                          "stored by ~/add_keyframe"),
        DeclareLaunchArgument("keyframe_pose", default_value="keyframe_pose",
                              description="camera optical frame pose in frame_id (e.g. from SLAM), "
                                          "stored by ~/add_keyframe"),
        DeclareLaunchArgument("initialpose", default_value="initialpose",
                              description="where the base pose for AMCL goes (after ~/relocalize, or on "
                                          "sustained disagreement with amcl_pose); relative, so a "
                                          "namespaced AMCL hears it"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace of the node and of its relative topics"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="use the /clock topic's time (simulation, bag replay)"),
        DeclareLaunchArgument("log_level", default_value="info",
                              description="debug | info | warn | error | fatal"),
    ]
    arguments += [
        DeclareLaunchArgument(name, default_value="",
                              description=f"{text}; empty: keep the params file's value")
        for name, text in OVERRIDES.items()
    ]
    node = Node(
        package="roma_ros",
        executable="match_node",
        name="roma_matcher",
        namespace=LaunchConfiguration("namespace"),
        parameters=[
            LaunchConfiguration("params_file"),
            {"use_sim_time": LaunchConfiguration("use_sim_time")},
            NonEmptyOverrides(OVERRIDES),
        ],
        remappings=[("image", image), ("image/compressed", [image, "/compressed"]),
                    ("camera_info", LaunchConfiguration("camera_info")), ("depth", LaunchConfiguration("depth")),
                    ("keyframe_pose", LaunchConfiguration("keyframe_pose")),
                    ("initialpose", LaunchConfiguration("initialpose"))],
        ros_arguments=["--log-level", LaunchConfiguration("log_level")],
        output="screen",
    )
    return LaunchDescription(arguments + [node])
