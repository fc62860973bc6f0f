"""Data (Section 3): tfds sources, the embedded Fashion-MNIST, preprocessing, the mean image.

`sources`: which dataset (a tfds name or an image folder), which records (a
host's share, chosen classes, listed ids) and their labels and ids.
`input_pipeline`: one tf.data pipeline for every tfds image classification
dataset (the paper's crops, flips and mean subtraction, 10-crop evaluation,
per-host shards), with `sources`' public names. `datasets`: the tfds builder
for Debian's Fashion-MNIST.
"""
