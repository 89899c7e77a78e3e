"""Shared test setup: loopback-only Ray/MLflow defaults and deterministic seeds."""

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
