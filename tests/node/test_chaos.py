"""The chaos run, short (issue 29 item 8): SCP and worker under a steady C-STORE load while
PostgreSQL restarts, the disk fills and drains, the destination goes away and comes back and
the worker is SIGKILLed (``tests/chaos.py``; its long run is a benchmark). Every acknowledged
instance is archived and recorded or deleted after its answer; every complete study is
answered exactly once; nothing unanswered is deleted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.chaos import run
from tests.conftest import _pg_reachable, skip_or_fail

pytestmark = pytest.mark.timeout(900)


def test_a_short_chaos_run_loses_nothing_and_answers_every_complete_study_once(tmp_path: Path) -> None:
    why = _pg_reachable()
    if why:
        skip_or_fail(why)
    summary = run(1.0, tmp_path / "chaos", cycle=30.0, interval=6.0)
    print(json.dumps(summary, indent=1))
    assert summary["faults"]["database restarted"] >= 2 and summary["faults"]["worker SIGKILLed"] >= 2
    assert summary["lost"] == 0 and summary["unanswered"] == 0 and summary["answered_twice"] == 0, summary
    assert summary["deleted_unanswered"] == 0 and summary["complete_studies"] >= 6, summary
    assert summary["instances_acknowledged"] == summary["archived"] + summary["deleted_after_answer"], summary
    assert summary["ok"]
