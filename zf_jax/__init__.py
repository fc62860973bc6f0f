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
    runs/     a run: its configuration (flags), workdir, checkpoints, trainer, Table 2,
              published ImageNet weights imported as a run (imported)
  Section 4, looking inside:
    occlusion Fig. 7's occlusion maps
    analyses/ Fig. 2's top activations, Fig. 5's invariance, Table 1's correspondence
    report/   figures (PNG), tables (Markdown + JSON), the report page of a run, and one
              page for several runs (multi)
    explore   the helpers of notebooks/explore.ipynb
  Section 5, whole trained networks:
    section5/ Table 3's architecture ablations (ablation); Tables 4-7 and Fig. 9's transfer
              (features, folds, classifiers, transfer) and the overlap check (dedup)
  Shared: options (configuration fields with their help), files (atomic writes),
  chunks (fixed-size chunks, one compiled shape).
"""

__version__ = "0.1.0"
