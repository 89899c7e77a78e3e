"""Tests of hvdistill.models.lidar (spconv on CPU with the Native algorithm)."""
