"""moe_fusion_ros: the ROS 2 shell around moe_fusion_core, and the ROS-free pieces it shares with bag replay.

Only :mod:`moe_fusion_ros.node` imports rclpy; every other module imports without ROS installed:
``sync`` (optimal thermal/RGB pairing), ``thermal`` (Image decoding), ``latest`` (latest-only hand-over),
``messages`` (outgoing messages as plain data), ``msg_defs`` (vision_msgs for rosbags), ``params`` (parameters),
``pipeline`` (pair → arrays → engine → messages), ``replay`` (``moe-fusion replay``), ``cli``.
"""

__version__ = "0.1.0"
