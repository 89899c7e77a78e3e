"""Tests of hvdistill.models.depth."""
