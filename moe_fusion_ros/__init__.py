"""moe_fusion_ros: the ROS 2 shell around moe_fusion_core, and the ROS-free pieces it shares with bag replay.

Only :mod:`moe_fusion_ros.node` imports rclpy; every other module imports without ROS installed.
"""

__version__ = "0.1.0"
