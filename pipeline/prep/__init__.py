"""Stage 2, a loaded study -> the model input (Haim et al. 2022, "Image analysis"): the
parameters a bundle records, the brain mask, N4 bias correction, z-score normalisation, the
slices and crops; ``preprocess.preprocess`` runs the recipe."""
