"""lidar package."""
