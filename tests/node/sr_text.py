"""Reading an SR's words in the tests: every TEXT value of its content tree, and the Contributing
Equipment's description."""

from __future__ import annotations

from pydicom.dataset import Dataset


def sr_texts(ds: Dataset) -> list[str]:
    """Every TEXT content item's value, depth first."""
    out = []
    for item in ds.get("ContentSequence", []):
        if item.get("ValueType") == "TEXT":
            out.append(str(item.TextValue))
        out += sr_texts(item)
    return out


def contributions(ds: Dataset) -> list[str]:
    return [str(item.get("ContributionDescription", "")) for item in ds.get("ContributingEquipmentSequence", [])]
