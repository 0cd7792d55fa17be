#!/usr/bin/env bash
# Run a command (the test suite) with ROS 2 available, for the tests that start the node in a live graph:
#   1. a ROS 2 already sourced in this shell (ROS_DISTRO set: /opt/ros/<distro>/setup.bash, a workspace), else
#   2. SHARED/ros2/activate.sh (the minimal ROS 2 Jazzy beside the checkout; CI has it), else
#   3. none: the live-graph tests skip, with the reason.
# In cases 1 and 2 MOE_FUSION_REQUIRE_ROS=1 makes those tests fail loudly if rclpy cannot be used after all.
# Usage: test/with_ros2.sh SHARED_DIR COMMAND [ARGS...]
set -eo pipefail
shared=$1
shift
if [ -n "${ROS_DISTRO:-}" ]; then
  echo "with_ros2: using the ROS 2 ${ROS_DISTRO} sourced in this shell" >&2
  export MOE_FUSION_REQUIRE_ROS=1
elif [ -f "$shared/ros2/activate.sh" ]; then
  # shellcheck disable=SC1091
  . "$shared/ros2/activate.sh" || { echo "with_ros2: $shared/ros2/activate.sh failed" >&2; exit 1; }
  echo "with_ros2: using ${ROS2_MINIMAL_ROOT} (ROS 2 ${ROS_DISTRO}, traffic on loopback)" >&2
  export MOE_FUSION_REQUIRE_ROS=1
else
  echo "with_ros2: no ROS 2 sourced and no $shared/ros2: the live-graph tests will skip" >&2
fi
exec "$@"
