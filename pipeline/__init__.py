"""From an archived study and its lesion mask to model inputs and predictions.

Knows DICOM files, not DICOM networking. Imports ``db`` only where it must.
"""
