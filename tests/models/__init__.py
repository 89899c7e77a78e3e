"""Tests of hvdistill.models."""
