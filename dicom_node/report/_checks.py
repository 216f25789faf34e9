"""Argument checks shared by the builders: ``Argument "x" must ...``, TypeError for a wrong
type, ValueError for a wrong value (shared/STYLE.md)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

from pydicom.dataset import Dataset

from pipeline.uids import is_uid

__all__ = ["check_datasets", "check_real", "check_series_number", "check_text", "check_uid"]



def check_text(name: str, value: object, *, max_length: int = 64) -> str:
    """A non-empty str of at most ``max_length`` characters (LO is 64)."""
    if not isinstance(value, str):
        raise TypeError(f'Argument "{name}" must be a str, not {type(value).__name__}')
    if not value.strip() or len(value) > max_length:
        raise ValueError(f'Argument "{name}" must be non-empty and at most {max_length} characters, not {value!r}')
    return value


def check_uid(name: str, value: object) -> str:
    """A valid DICOM UID (digits and dots, at most 64 characters)."""
    if not isinstance(value, str):
        raise TypeError(f'Argument "{name}" must be a UID str, not {type(value).__name__}')
    if not is_uid(value):
        raise ValueError(f'Argument "{name}" must be a valid DICOM UID, not {value!r}')
    return value


def check_real(name: str, value: object, low: float, high: float) -> float:
    """A finite real number in [low, high] (bool is refused: True is not a probability)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f'Argument "{name}" must be a real number, not {type(value).__name__}')
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise ValueError(f'Argument "{name}" must be in [{low}, {high}], not {number}')
    return number


def check_series_number(name: str, value: object) -> int:
    """A positive IS (at most 2**31 - 1)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f'Argument "{name}" must be an int, not {type(value).__name__}')
    if not 1 <= value < 2**31:
        raise ValueError(f'Argument "{name}" must be in [1, 2**31 - 1], not {value}')
    return value


def check_datasets(name: str, value: object) -> list[Dataset]:
    """A non-empty sequence of Datasets from one series (SeriesInstanceUID) of one study."""
    if isinstance(value, (Dataset, str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f'Argument "{name}" must be a sequence of pydicom Datasets, not {type(value).__name__}')
    datasets = list(value)
    if not datasets:
        raise ValueError(f'Argument "{name}" must hold at least one image')
    for ds in datasets:
        if not isinstance(ds, Dataset):
            raise TypeError(f'Argument "{name}" must hold pydicom Datasets only, not {type(ds).__name__}')
        missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID") if k not in ds]
        if missing:
            raise ValueError(f'Argument "{name}" must hold images with {", ".join(missing)}')
    if len({str(ds.StudyInstanceUID) for ds in datasets}) != 1:
        raise ValueError(f'Argument "{name}" must hold images of one study')
    if len({str(ds.SeriesInstanceUID) for ds in datasets}) != 1:
        raise ValueError(f'Argument "{name}" must hold images of one series (the source series)')
    if len({str(ds.SOPInstanceUID) for ds in datasets}) != len(datasets):
        raise ValueError(f'Argument "{name}" must not repeat an image (duplicate SOPInstanceUID)')
    return datasets
