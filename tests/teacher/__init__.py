"""Tests of `hvdistill teacher train` (hvdistill/teacher/)."""
