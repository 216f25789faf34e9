"""Issue 33, item 3: the package type-checks under mypy's strict mode (configuration in
pyproject.toml ``[tool.mypy]``: db, pipeline, dicom_node and training). A type error fails the
suite, and with it CI, with mypy's own lines."""

from __future__ import annotations

from pathlib import Path

from mypy import api

ROOT = Path(__file__).resolve().parent.parent


def test_the_package_type_checks_strictly(monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # the configuration's ``files`` are relative to the repository
    stdout, stderr, status = api.run(["--config-file", str(ROOT / "pyproject.toml"),
                                      "--cache-dir", str(ROOT / ".mypy_cache")])
    assert status == 0, f"mypy found type errors:\n{stdout}{stderr}"
    assert "Success: no issues found" in stdout
