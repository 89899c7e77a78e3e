"""The frozen 2D teacher: torchvision-layout ResNets, DINOv2-layout ViTs, checkpoint loading, the IPV head."""

from hvdistill.models.image.resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet50
from hvdistill.models.image.teacher import ImageTeacher, TeacherOutput, build_image_teacher
from hvdistill.models.image.vit import VIT_ARCHITECTURES, VisionTransformer, VitLayout, build_vit
from hvdistill.models.image.weights import LoadReport, load_teacher_weights

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "resnet18",
    "resnet50",
    "ImageTeacher",
    "TeacherOutput",
    "build_image_teacher",
    "VIT_ARCHITECTURES",
    "VisionTransformer",
    "VitLayout",
    "build_vit",
    "LoadReport",
    "load_teacher_weights",
]
