"""zf_jax: Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks" in JAX.

The paper's sections are the map:

  Section 2, the model and the deconvnet (the public API, ../shared/API.md):
    arch      architectures, presets, Table 3 ablations
    layers    pure conv / relu / max-pool-with-switches / unpool / LRN / transposed conv
    model     init, apply -> (logits, Trace)
    deconv    Section 2.1's projections to pixel space
  Section 3, training:
    train     the recipe as pure, jit-compiled steps (TrainConfig, RMS renormalisation)
    data/     tfds sources, the embedded Fashion-MNIST, crops, flips, the mean image
    runs/     a run: its configuration (flags), workdir, checkpoints, trainer, Table 2
  Section 4, looking inside:
    occlusion Fig. 7's occlusion maps
    analyses/ Fig. 2's top activations, Fig. 5's invariance, Table 1's correspondence
    report/   figures (PNG), tables (Markdown + JSON) and the report page of a run
  Section 5, whole trained networks:
    section5/ Table 3's architecture ablations (ablation)
  Shared: options (configuration fields with their help), files (atomic writes),
  chunks (fixed-size chunks, one compiled shape).
"""

__version__ = "0.1.0"
