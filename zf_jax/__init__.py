"""zf_jax: Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks" in JAX.

Modules: ``arch`` (architectures, presets, Table 3 ablations), ``layers`` (pure
conv / relu / max-pool-with-switches / unpool / LRN / transposed conv),
``model`` (init, apply -> (logits, Trace)), ``deconv`` (Section 2.1
projections to pixel space).
"""

__version__ = "0.1.0"
