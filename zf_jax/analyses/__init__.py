"""Section 4's analyses of a trained run, as arrays in and arrays out.

`source`: a restored run paired with a split, preprocessed as it was trained.
`topk`: Fig. 2's strongest activations. `invariance`: Fig. 5.
`correspondence`: Table 1 (`part_boxes`: its parts files).
(Fig. 7's occlusion is `zf_jax.occlusion`.)
"""
