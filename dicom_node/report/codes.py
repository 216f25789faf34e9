"""Coded concepts of the result objects, with the exact values of shared/SR.md.

pydicom ``Code`` values (immutable; highdicom turns each use into a fresh ``CodedConcept``,
so no content item shares a mutable code dataset with another document).
"""

from __future__ import annotations

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

__all__ = [
    "ALGORITHM_NAME", "ALGORITHM_PARAMETERS", "ALGORITHM_VERSION", "BRAIN", "COMMENT", "DEVICE_OBSERVER",
    "EGFR_GENE_MUTATION", "IMAGING_MEASUREMENT_REPORT", "MORPHOLOGICALLY_ABNORMAL_STRUCTURE",
    "MR_BRAIN_WO_AND_W_CONTRAST", "NEGATIVE", "NEOPLASM_METASTATIC", "NO_UNITS", "POSITIVE", "PROBABILITY",
    "PROCESSING_EQUIPMENT", "SECONDARY_MALIGNANT_NEOPLASM_OF_BRAIN", "SOURCE",
]

# TID 1500 root and context
IMAGING_MEASUREMENT_REPORT = Code("126000", "DCM", "Imaging Measurement Report")
MR_BRAIN_WO_AND_W_CONTRAST = Code("24587-8", "LN", "MR Brain WO and W contrast IV")
DEVICE_OBSERVER = Code("121007", "DCM", "Device")
PROCESSING_EQUIPMENT = Code("109102", "DCM", "Processing Equipment")
SOURCE = Code("260753009", "SCT", "Source")  # TID 1601 image library entry, as highdicom writes it

# TID 1411 finding
SECONDARY_MALIGNANT_NEOPLASM_OF_BRAIN = Code("94225005", "SCT", "Secondary malignant neoplasm of brain")
BRAIN = Code("12738006", "SCT", "Brain")

# TID 4019 algorithm identification
ALGORITHM_NAME = Code("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION = Code("111003", "DCM", "Algorithm Version")
ALGORITHM_PARAMETERS = Code("111002", "DCM", "Algorithm Parameters")

# The result: qualitative evaluation and its probability
EGFR_GENE_MUTATION = Code("C98357", "NCIt", "EGFR Gene Mutation")
POSITIVE = Code("10828004", "SCT", "Positive")
NEGATIVE = Code("260385009", "SCT", "Negative")
PROBABILITY = Code("122157", "DCM", "Probability")
NO_UNITS = Code("1", "UCUM", "no units")
COMMENT = Code("121106", "DCM", "Comment")  # the result in words: OHIF's measurement label

# SEG segment of a lesion converted from an RTSTRUCT (as pipeline/phantom/seg_writer.py)
MORPHOLOGICALLY_ABNORMAL_STRUCTURE: Code = codes.SCT.MorphologicallyAbnormalStructure  # 49755003
NEOPLASM_METASTATIC: Code = codes.SCT.NeoplasmMetastatic  # 14799000
