"""Data (Section 3): tfds sources, the embedded Fashion-MNIST, preprocessing, the mean image.

`input_pipeline`: one tf.data pipeline for every tfds image classification
dataset (the paper's crops, flips and mean subtraction, 10-crop evaluation,
per-host shards). `datasets`: the tfds builder for Debian's Fashion-MNIST.
"""
