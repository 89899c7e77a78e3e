"""Downstream evaluation: semantic segmentation fine-tuning and linear probing with label fractions.

metrics.py       confusion matrix, per-class IoU and mIoU, written as JSON / CSV.
lovasz.py        the Lovasz-softmax loss with an ignore label.
splits.py        label fractions by the SLidR protocol (1 in k scenes / scans), saved as JSON.
classes.py       the class maps and names of each dataset's labels.
scans.py         the downstream data path: labelled scans read from shards, selected by key.
voxels.py        downstream augmentation, voxelisation with per-point inverse indices, batches.
segmentation.py  the segmentation model: the 3D UNet backbone + a fresh classifier.
backbone.py      finding and checking a pretrained backbone (run dir, backbone.pt, MLflow run).
evaluate.py      per-point evaluation over a whole split.
finetune.py      the fine-tuning / linear-probing loop (one function).
run.py           `hvdistill finetune`: the run directory, tracking, the command line.

Nothing here imports spconv (models/lidar/ builds every sparse tensor) or ray. docs/finetuning.md
describes the protocol and every number.
"""
