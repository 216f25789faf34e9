"""Stage 1, a study folder -> a loaded study: the DICOM index of the folder, the references
between masks and images, the series and mask selection, the volume on its grid, the lesion
mask (SEG or RTSTRUCT) resampled onto it, and ``study.load_study`` putting them together."""
