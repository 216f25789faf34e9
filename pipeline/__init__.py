"""From an archived study and its lesion mask to model inputs and predictions.

Knows DICOM files, not DICOM networking. Imports ``db`` only where it must. By stage:
``load`` (folder -> loaded study), ``prep`` (loaded study -> model input), ``model``
(model input -> probability and status); ``prepare.prepare_study`` runs the first two, as
the worker, training's cohort cache and ``egfr-node preprocess`` all do. ``phantom`` writes
synthetic cohorts; ``errors``, ``timing`` and ``contrast`` serve every stage.
"""
