"""DESIGN.md's one-way dependencies, as the running code has them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def modules_loaded_by(*imports: str) -> set[str]:
    code = f"import sys; import {', '.join(imports)}; print('\\n'.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return {name.split(".")[0] for name in done.stdout.split()}


def test_the_receive_path_never_imports_torch_or_image_processing() -> None:
    loaded = modules_loaded_by("dicom_node.receive.scp", "dicom_node.store.archive", "dicom_node.worker", "dicom_node.cli", "db.ingest", "db.queue")
    assert not loaded & {"torch", "torchvision", "SimpleITK", "highdicom", "matplotlib", "training"}


def test_db_imports_nothing_of_ours() -> None:
    loaded = modules_loaded_by("db.models", "db.ingest", "db.queue", "db.migrate", "db.engine")
    assert not loaded & {"dicom_node", "pipeline", "training"}


def _imports_in(package: str) -> dict[str, set[str]]:
    """Every module of ours each file of ``package`` imports, at the top or inside a function."""
    import ast

    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[path.relative_to(ROOT).as_posix()] = names & {"db", "pipeline", "dicom_node", "training", "tests"}
    return found


def test_every_import_points_the_way_design_draws_it() -> None:
    """Read from the source, so a lazy import inside a function counts too. db imports nothing
    of ours; pipeline only db; training pipeline and db; dicom_node all but tests, and training
    only where DESIGN.md's table says (the train, evaluate and demo front doors, and reading a cohort or outcomes CSV)."""
    allowed = {"db": set(), "pipeline": {"db"}, "training": {"pipeline", "db"}, "dicom_node": {"db", "pipeline"}}
    front_doors = {"dicom_node/commands/train.py", "dicom_node/commands/evaluate.py", "dicom_node/commands/demo.py",
                   "dicom_node/commands/archive.py", "dicom_node/commands/outcomes.py",
                   "dicom_node/commands/serve.py"}  # serve: checks [training] with the recipe's own rules at start
    wrong = []
    for package, may in allowed.items():
        for path, names in _imports_in(package).items():
            extra = names - may - {package} - ({"training"} if path in front_doors else set())
            if extra:
                wrong.append(f"{path} imports {', '.join(sorted(extra))}")
    assert wrong == []


def test_the_archive_wing_knows_no_door() -> None:
    """dicom_node/store is what every door (the DIMSE server, STOW-RS, fetch, import, the job's
    results) stores through: it imports none of them, and no pynetdicom at all."""
    import ast

    wrong = []
    for path in sorted((ROOT / "dicom_node" / "store").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if name.startswith(("dicom_node.receive", "dicom_node.web", "dicom_node.fetch", "dicom_node.worker",
                                    "dicom_node.commands", "dicom_node.scu", "dicom_node.dicomweb_peer")) \
                        or name.startswith("pynetdicom"):
                    wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert wrong == []


#: (which files, what they may not import, why)
WING_RULES = (
    (("dicom_node/receive/", "dicom_node/web/", "dicom_node/metrics.py"), ("dicom_node.commands", "dicom_node.cli"),
     "the DIMSE server, the console and metrics call services, never the command line"),
    (("dicom_node/",), ("dicom_node.receive._pynetdicom", "dicom_node.receive.scp", "dicom_node.receive.limits"),
     "outside the receive wing only its server (dicom_node.receive.server) is used"),
)


def wing_violations(sources: dict[str, str]) -> list[str]:
    """Imports (top-level or lazy) that break WING_RULES, in ``sources`` (path -> text)."""
    import ast

    wrong = []
    for path, text in sorted(sources.items()):
        names = []
        for node in ast.walk(ast.parse(text, path)):
            if isinstance(node, ast.Import):
                names += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.append(node.module)
        for where, forbidden, why in WING_RULES:
            if not path.startswith(where) or (forbidden[0].startswith("dicom_node.receive") and path.startswith("dicom_node/receive/")):
                continue
            wrong += [f"{path} imports {name}: {why}" for name in names if name.startswith(forbidden)]
    return wrong


def _package_sources() -> dict[str, str]:
    return {p.relative_to(ROOT).as_posix(): p.read_text() for p in (ROOT / "dicom_node").rglob("*.py")}


def test_wings_use_services_not_commands_and_the_receive_wing_only_by_its_server() -> None:
    assert wing_violations(_package_sources()) == []


def test_the_wing_rules_catch_a_planted_import() -> None:
    planted = {**_package_sources(),
               "dicom_node/receive/planted.py": "def f():\n    from dicom_node.commands.check import run\n",
               "dicom_node/worker_planted.py": "from dicom_node.receive.scp import handle_store\n"}
    assert len(wing_violations(planted)) == 2
