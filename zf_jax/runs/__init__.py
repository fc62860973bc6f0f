"""A training run (Section 3) and everything that reads one.

`config`: the run's configuration (dataclasses -> absl flags -> config.json).
`workdir`: a run's folder: its layout, config, checkpoints, metrics; opening
a run for evaluation and analysis. `checkpoint`: orbax save / restore.
`trainer`: the sharded training loop. `evaluation`: Table 2. `imported`:
published ImageNet weights (pytorchcv, torchvision) written as a run's workdir.
"""
