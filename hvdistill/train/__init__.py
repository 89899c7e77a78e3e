"""Pretraining: the DeepSpeed engine, the loop, checkpoints and the `run(cfg)` entry every launcher calls.

`run.py` is the process-level entry (`hvdistill pretrain`, the `deepspeed`/`torchrun` launchers,
Ray Train workers); `engine.py` is the only DeepSpeed importer; `loop.py` is the training loop;
`checkpoint.py` writes and reads checkpoints that load with `torch.load(weights_only=True)`;
`data.py` builds each rank's batches; `schedule.py` the learning rate. See docs/training.md.
"""
