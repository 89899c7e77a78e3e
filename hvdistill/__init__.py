"""hvdistill: label-free LiDAR pretraining by hybrid-view (image-plane + BEV) distillation.

The library: config, geometry, data (synthetic world, dataset sources, shard schema and reader,
augmentation, collate), models (spconv student, frozen image teacher, depth lift) and losses.
It never imports ray; `hvdistill.cli` dispatches the verbs that live in sharding/ and launch/.
"""

__version__ = "0.1.0"
