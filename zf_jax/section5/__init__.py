"""Section 5 of the paper: experiments on whole trained networks.

  ablation     Table 3 (Section 5.1): architecture variants trained from scratch
               (`python -m experiments.ablation`)
  features     a trained run's layer features for a whole dataset, cached
  folds        the paper's n-per-class train / test folds
  classifiers  softmax (L-BFGS, all folds at once), linear SVM, per-class accuracy, VOC AP
  transfer     Tables 4-7 and Fig. 9 (Sections 5.2, 5.3; `python -m experiments.transfer`)
  dedup        the training images also in a transfer dataset (`python -m experiments.dedup`)
  dedup_state  a de-duplication search saved and resumed (the binary's dedup_search.npz)
"""
