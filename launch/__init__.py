"""Ray cluster entry points for pretraining: Ray Train workers (`pretrain --ray`) and Ray Jobs (`submit`).

The only package besides sharding/ that imports ray; hvdistill/cli.py dispatches to it lazily.
"""
