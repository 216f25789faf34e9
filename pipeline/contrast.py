"""Is the chosen series post-contrast? The method reads post-contrast T1 (the paper's T1W+c);
a pre-contrast T1 looks alike to a network and gets a confident, meaningless answer.

Evidence, in order: a non-empty Contrast/Bolus Agent (0018,0010) or Contrast/Bolus Agent
Sequence (0018,0012) in an instance; an Enhanced MR's Contrast/Bolus Usage (0018,9341) with
Contrast/Bolus Agent Administered YES in its shared or per-frame functional groups; and, only
when a site configures it (for scanners that leave the attribute out), a Series Description
that matches ``series_description_pattern``. :func:`contrast_evidence` says which was found,
in words that go on the job and in the SR; without any, :func:`check_contrast` raises
:class:`ContrastError` unless the rule is switched off (then it says so).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from pipeline.errors import ContrastError

__all__ = ["ContrastRule", "contrast_evidence", "check_contrast"]


@dataclass(frozen=True)
class ContrastRule:
    """``require_evidence``: no prediction without evidence of contrast (default).
    ``series_description_pattern``: a regular expression (searched, case as written) that
    counts as evidence when the attributes are absent; empty: descriptions are not evidence."""

    require_evidence: bool = True
    series_description_pattern: str = ""

    def __post_init__(self) -> None:
        try:
            re.compile(self.series_description_pattern)
        except re.error as exc:
            raise ValueError(f'Argument "series_description_pattern" must be a regular expression: {exc}') from exc


def _administered(groups: Sequence[Dataset]) -> bool:
    for group in groups:
        for usage in group.get("ContrastBolusUsageSequence", []) or []:
            if str(usage.get("ContrastBolusAgentAdministered", "")).upper() == "YES":
                return True
    return False


def contrast_evidence(headers: Sequence[Dataset], rule: ContrastRule) -> str | None:
    """What shows the series is post-contrast, in words; None when nothing does."""
    for ds in headers:
        agent = str(ds.get("ContrastBolusAgent", "") or "").strip()
        if agent:
            return f"Contrast/Bolus Agent {agent[:64]!r}"
        if ds.get("ContrastBolusAgentSequence"):
            return "Contrast/Bolus Agent Sequence present"
        if _administered(ds.get("SharedFunctionalGroupsSequence", []) or []) or _administered(
                ds.get("PerFrameFunctionalGroupsSequence", []) or []):
            return "Contrast/Bolus Usage: agent administered"
    if rule.series_description_pattern:
        for ds in headers:
            description = str(ds.get("SeriesDescription", "") or "")
            if description and re.search(rule.series_description_pattern, description):
                return (f"Series Description {description[:64]!r} matches "
                        f"contrast.series_description_pattern {rule.series_description_pattern!r}")
    return None


def check_contrast(headers: Sequence[Dataset], series_uid: str, rule: ContrastRule) -> str:
    """The evidence of contrast in the series ``series_uid``; ContrastError (one line) without
    any while the rule requires it; with the rule off, a line saying none was required."""
    found = contrast_evidence(headers, rule)
    if found is not None:
        return found
    if not rule.require_evidence:
        return "no evidence of contrast; not required (contrast.require_evidence = false)"
    description = next((str(ds.get("SeriesDescription", "")) for ds in headers if ds.get("SeriesDescription")), "")
    hint = (f"its Series Description {description[:64]!r} does not match contrast.series_description_pattern"
            if rule.series_description_pattern else "set contrast.series_description_pattern for scanners that "
            "leave the attribute out")
    raise ContrastError(f"series {series_uid}: no evidence of a contrast agent (no Contrast/Bolus Agent, no "
                        f"Contrast/Bolus Usage); the method reads post-contrast T1 ({hint})")
