"""Series and content dates and times on every object the node makes (SR, SEG, result card).

PACS and Orthanc list a study's series by SeriesDate / SeriesTime (Orthanc Explorer puts a
series without them under "?"), and viewers sort and label results by them. Every object
of one result gets the same instant: the moment its content was created.
"""

from __future__ import annotations

from datetime import datetime

from pydicom.dataset import Dataset

__all__ = ["stamp_series_and_content_time"]


def stamp_series_and_content_time(ds: Dataset, when: datetime | None = None) -> Dataset:
    """Set SeriesDate/SeriesTime and ContentDate/ContentTime of ``ds`` to ``when`` (default:
    now, local time, as the node's clock); returns ``ds``."""
    when = when or datetime.now()
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S.%f")
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.ContentDate, ds.ContentTime = date, time
    return ds
