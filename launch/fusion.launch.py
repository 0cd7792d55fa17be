"""Launch the MoE-Fusion thermal + RGB fusion node.

    ros2 launch moe_fusion_ros fusion.launch.py thermal_topic:=/thermal/image_raw rgb_topic:=/camera/image_raw
    ros2 launch moe_fusion_ros fusion.launch.py use_sim_time:=true device:=cpu   # bag replay on a laptop

Everything not listed here is a parameter in ``params_file`` (default: the installed ``config/fusion.yaml``).
Launching has no side effects beyond starting the node.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from launch import LaunchDescription

PACKAGE = "moe_fusion_ros"


def generate_launch_description() -> LaunchDescription:
    default_params = os.path.join(get_package_share_directory(PACKAGE), "config", "fusion.yaml")
    args = [
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("thermal_topic", default_value="/thermal/image_raw",
                              description="thermal sensor_msgs/Image topic (remapped to thermal/image_raw)"),
        DeclareLaunchArgument("rgb_topic", default_value="/camera/image_raw",
                              description="RGB sensor_msgs/Image topic (remapped to rgb/image_raw)"),
        DeclareLaunchArgument("rgb_info_topic", default_value="/camera/camera_info",
                              description="RGB sensor_msgs/CameraInfo topic (remapped to rgb/camera_info)"),
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="parameters YAML (keys under '/**: ros__parameters:')"),
        DeclareLaunchArgument("device", default_value="cuda:0", description="torch device: cuda:N or cpu"),
        DeclareLaunchArgument("use_sim_time", default_value="false", choices=["true", "false"],
                              description="use /clock (true when replaying a bag with --clock)"),
        DeclareLaunchArgument("log_level", default_value="info", choices=["debug", "info", "warn", "error", "fatal"],
                              description="node log level"),
        DeclareLaunchArgument("autostart", default_value="true", choices=["true", "false"],
                              description="configure and activate the lifecycle node at start"),
    ]
    node = Node(
        package=PACKAGE,
        executable="fusion_node",
        name="moe_fusion",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "model.device": ParameterValue(LaunchConfiguration("device"), value_type=str),
                "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
                "autostart": ParameterValue(LaunchConfiguration("autostart"), value_type=bool),
            },
        ],
        remappings=[
            ("thermal/image_raw", LaunchConfiguration("thermal_topic")),
            ("rgb/image_raw", LaunchConfiguration("rgb_topic")),
            ("rgb/camera_info", LaunchConfiguration("rgb_info_topic")),
        ],
        arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
    )
    return LaunchDescription([*args, node])
