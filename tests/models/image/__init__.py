"""Tests of hvdistill.models.image."""
