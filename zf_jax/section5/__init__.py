"""Section 5 of the paper: experiments on whole trained networks.

  ablation   Table 3 (Section 5.1): architecture variants trained from scratch
             (`python -m experiments.ablation`)
"""
