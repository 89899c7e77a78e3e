"""Depth and lift: bridge, camera-aware depth net, frustum cells and sparse BEV pooling."""

from hvdistill.models.depth.bev_pool import BEVPool, PoolIndex, bev_pool, prepare_pool_index, ray_cells
from hvdistill.models.depth.depth_net import Bridge, DepthNet, camera_parameters
from hvdistill.models.depth.lift import BEVLift, LiftOutput, build_depth_lift

__all__ = [
    "BEVPool",
    "PoolIndex",
    "bev_pool",
    "prepare_pool_index",
    "ray_cells",
    "Bridge",
    "DepthNet",
    "camera_parameters",
    "BEVLift",
    "LiftOutput",
    "build_depth_lift",
]
