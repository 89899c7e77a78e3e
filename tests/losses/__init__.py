"""Tests of hvdistill/losses/."""
