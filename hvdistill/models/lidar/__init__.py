"""The 3D student on spconv (the only package importing spconv).

sparse.py   the one place building spconv sparse tensors; conv-algorithm choice per device.
blocks.py   sparse conv + BN + ReLU units, BasicBlock, indice-key naming.
unet.py     SparseUNet, the MinkUNet34C-layout backbone (96-d per-voxel features).
heads.py    IPV head (per voxel) and BEV head ("strided" or "column") on the 0.4 m grid.
student.py  LidarStudent (backbone + heads), LidarOutput, build_lidar_model.
"""

from hvdistill.models.lidar.sparse import conv_algo, sparse_input
from hvdistill.models.lidar.student import LidarOutput, LidarStudent, build_lidar_model
from hvdistill.models.lidar.unet import SparseUNet

__all__ = [
    "LidarOutput",
    "LidarStudent",
    "SparseUNet",
    "build_lidar_model",
    "conv_algo",
    "sparse_input",
]
