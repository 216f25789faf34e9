"""``egfr-node demo``: the node's main job end to end, on this machine alone.

With no data, no GPU and no network: writes a small phantom cohort, trains a small fold
ensemble with the training package, activates it, starts the node on loopback with a local
Storage SCP standing in for PACS, sends a held-out study the way PACS would (C-STORE of the
MR series and its RTSTRUCT), waits for the SR to arrive at the stand-in PACS and prints the
status, the probability and where everything is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import argparse
import shutil
import socket
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Comprehensive3DSRStorage, SegmentationStorage, Verification

if TYPE_CHECKING:
    from dicom_node.store.open import Runtime
    from pipeline.phantom import PhantomStudy

__all__ = ["LocalPacs", "main"]

SR_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.33"}


class LocalPacs:
    """A Storage SCP on loopback that keeps every instance it receives as a file in ``folder``."""

    def __init__(self, folder: Path, port: int = 0, ae_title: str = "PACS") -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.received: list[Dataset] = []
        self.paths: list[Path] = []
        self.lock = threading.Lock()
        self.ae = AE(ae_title=ae_title)
        self.ae.supported_contexts = AllStoragePresentationContexts
        for extra in (Comprehensive3DSRStorage, SegmentationStorage, Verification):
            self.ae.add_supported_context(extra)
        self.server = self.ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = self.server.server_address[1]

    def _on_store(self, event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self.lock:
            path = self.folder / f"{len(self.received):03d}-{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            self.received.append(ds)
            self.paths.append(path)
        return 0x0000

    def of_class(self, sop_class_uid: str) -> list[Dataset]:
        with self.lock:
            return [ds for ds in self.received if ds.SOPClassUID == sop_class_uid]

    def files(self) -> list[Path]:
        with self.lock:
            return list(self.paths)

    def stop(self) -> None:
        self.server.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _send_like_pacs(folder: Path, port: int) -> int:
    """C-STORE every file of ``folder`` to the node in one association (what PACS routing does)."""
    from pydicom import dcmread

    files = sorted(folder.rglob("*.dcm"))
    ae = AE(ae_title="PACS")
    datasets = [dcmread(p) for p in files]
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class)
    assoc = ae.associate("127.0.0.1", port, ae_title="EGFR_NODE")
    if not assoc.is_established:
        raise RuntimeError("the node refused the association")
    try:
        bad = [ds.SOPInstanceUID for ds in datasets if int(assoc.send_c_store(ds).Status) != 0]
    finally:
        assoc.release()
    if bad:
        raise RuntimeError(f"{len(bad)} instances were not stored")
    return len(datasets)


def _step(number: int, text: str) -> float:
    print(f"\n[{number}/6] {text}", flush=True)
    return time.perf_counter()


def _done(start: float, text: str = "") -> None:
    print(f"      {text + ' ' if text else ''}({time.perf_counter() - start:.1f} s)", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="egfr-node demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("egfr-demo"), help="work folder (default ./egfr-demo; replaced)")
    parser.add_argument("--patients", type=int, default=30, help="phantom training patients (default 30)")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs per fold (default 30)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the SR")
    args = parser.parse_args(list(argv) if argv is not None else None)
    return run(args.dir, patients=args.patients, epochs=args.epochs, seed=args.seed, timeout=args.timeout)


#: The demo's phantoms: 1 mm axial MPRAGE-like series (the lesion shows on all five model
#: slices) and the generator's clearest EGFR effect. A phantom is not a patient: this shows the
#: method working where the signal is plain, nothing about real lesions.
DEMO_GEOMETRY = "axial3d"
DEMO_EFFECT_SIZE = 1.0


def run(work: Path, *, patients: int = 30, epochs: int = 30, seed: int = 1, timeout: float = 300.0) -> int:
    from db.migrate import upgrade
    from dicom_node.bundles import ActivationRefused, activate
    from dicom_node.config import load_config
    from dicom_node.log_safety import configure_logging
    from dicom_node.store.open import open_runtime
    from dicom_node.receive.server import DicomNode
    from dicom_node.worker import Worker
    from pipeline.phantom import generate_cohort, generate_study
    from pipeline.prep.params import PreprocessParams
    from training import DEMO_SETTINGS, train_bundle

    started = time.perf_counter()
    work = Path(work).resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    configure_logging("WARNING")

    t = _step(1, f"phantom cohort: {patients} patients, half EGFR-positive, 1 mm axial series, the clearest phantom "
                 f"effect ({DEMO_EFFECT_SIZE:g}), + 1 held-out EGFR-positive study -> {work / 'cohort'}")
    generate_cohort(work / "cohort", patients, 0.5, seed, mask_kind="seg", geometry=DEMO_GEOMETRY,
                    effect_size=DEMO_EFFECT_SIZE, jobs=2)
    held_out = generate_study(work / "held-out", seed=seed + 1000, geometry=DEMO_GEOMETRY, mask_kind="rtstruct",
                              egfr_positive=True, patient_index=patients + 1, effect_size=DEMO_EFFECT_SIZE)
    _done(t)

    settings = replace(DEMO_SETTINGS, epochs=epochs, seed=seed)
    t = _step(2, f"train a small bundle ({settings.recipe} recipe: no ImageNet weights here; {settings.folds} folds x "
                 f"{epochs} epochs, 32x32 crops, no N4: the bundle records it and the node follows) -> {work / 'bundle'}")
    outcome = train_bundle(work / "cohort" / "labels.csv", work / "bundle", settings=settings,
                           params=PreprocessParams(output_size=32, bias_correction=False),
                           name="EGFR ResNet-50 demo (not for clinical use)", progress=True)
    headline = outcome.report["headline"]
    low, high = headline["auc_ci95"]
    print(f"      cross-validated on {outcome.report['data']['patients_used']} phantom patients: pooled patient AUC "
          f"{headline['auc']:.3f} (95% CI {low:.3f}-{high:.3f}); report {work / 'bundle' / 'report.md'}")
    _done(t)

    t = _step(3, "configure the node (loopback), its database, and activate the bundle")
    pacs = LocalPacs(work / "pacs")
    config_path = work / "egfr-node.toml"
    config_path.write_text(
        f'[node]\nae_title = "EGFR_NODE"\nhost = "127.0.0.1"\nport = {_free_port()}\n'
        f'[storage]\ndata_dir = "{work / "data"}"\nfree_space_reserve_mb = 0\n'
        f'[worker]\nstudy_stable_seconds = 2.0\nscan_interval_seconds = 0.5\nclaim_interval_seconds = 0.5\n'
        f'[logging]\nlevel = "WARNING"\n'
        f'[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = {pacs.port}\n'
    )
    config = load_config(config_path)
    upgrade(config.database_url)
    runtime = open_runtime(config)
    try:
        record = activate(runtime.sessions, str(work / "bundle"), user="egfr-node demo")
    except ActivationRefused as refused:  # a short demo run on few phantoms: say so, and show the node anyway
        print("      the bundle's guards refuse it: " + "; ".join(refused.concerns))
        print("      activated anyway for the demo (--force): audited, and its SR says 'activated despite'")
        record = activate(runtime.sessions, str(work / "bundle"), user="egfr-node demo", force=True)
    print(f"      config {config_path}; bundle {record.id} ({record.name} {record.version}) active")
    _done(t)

    node = DicomNode(config, runtime.archive, runtime.sessions)
    worker = Worker(config, runtime.sessions, runtime.archive)
    try:
        node.start()
        worker.start()
        t = _step(4, f"PACS sends the held-out study (MR + RTSTRUCT) to EGFR_NODE at 127.0.0.1:{node.port}")
        sent = _send_like_pacs(held_out.folder, node.port)
        _done(t, f"{sent} instances stored")

        t = _step(5, "the study is complete by its content (the RTSTRUCT and the images it names are in, then "
                     f"{config.worker.content_settle_seconds:g} s without a new one): the node predicts and sends the SR back")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not [ds for ds in pacs.received if str(ds.SOPClassUID) in SR_CLASSES]:
            time.sleep(0.2)
        srs = [ds for ds in pacs.received if str(ds.SOPClassUID) in SR_CLASSES]
        if not srs:
            print(f"egfr-node demo: no SR within {timeout:g} s; see `egfr-node --config {config_path} queue list`",
                  file=sys.stderr)
            return 1
        time.sleep(1.0)  # the result card follows the SR
        _done(t)
    finally:
        worker.stop()
        node.stop()
        pacs.stop()

    t = _step(6, "what the stand-in PACS received")
    _print_result(runtime, pacs, srs[0], held_out, config_path)
    runtime.close()
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s")
    print(WHAT_CHANGES.format(config=config_path))
    return 0


def _print_result(runtime: Runtime, pacs: LocalPacs, sr: Dataset, held_out: PhantomStudy, config_path: Path) -> None:
    from db.queue import list_jobs
    from dicom_node.report.sr import read_sr_result

    sr_path = next(p for p in pacs.files() if str(sr.SOPInstanceUID) in p.name)
    result = read_sr_result(sr_path)
    with runtime.sessions() as session:
        (job,) = list_jobs(session, limit=1)  # the demo's one job
    for path in pacs.files():
        print(f"      {path}")
    right = result.positive == held_out.egfr_positive
    print(f"\n      EGFR mutation status: {'POSITIVE' if result.positive else 'NEGATIVE'}   calibrated probability "
          f"{result.probability:.3f}"
          f"   (truth for this phantom: {'positive' if held_out.egfr_positive else 'negative'}: "
          f"{'right' if right else 'WRONG'})")
    print("      a phantom is not a patient: this shows the pipeline working on a clear synthetic effect, "
          "nothing about real lesions")
    print(f"      SR {sr.SOPInstanceUID}")
    print(f"      job {job.id}: `egfr-node --config {config_path} queue show {job.id}`; "
          f"read the SR with `dsrdump {sr_path}`")


WHAT_CHANGES = """
What a real deployment changes:
  - the model: a bundle trained on your cohort with the paper's recipe (`egfr-node train`, 5 folds x 40
    epochs, ImageNet weights from a local file), checked and activated with `egfr-node models activate`;
  - PACS: its AE title, host and port under [[destinations]], and the node's AE title and port in PACS's
    routing rules (deploy/PACS-ROUTING.md, deploy/orthanc/); `node.allowed_calling_aets`, TLS if needed;
  - the node runs as a service (`egfr-node serve`, deploy/egfr-node.service) on a data folder that is
    backed up, with `worker.study_stable_seconds` fitted to how PACS sends (default 30 s);
  - results are research use only: the SR says so, and internal cross-validation is not external validation.
Config used here: {config}"""


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="the main job end to end on a phantom cohort, on loopback", add_help=False)
    p.set_defaults(run=lambda args: main(args.rest), forwards=True)
