"""Benchmark: per-study inference of the node's fold ensemble, and study latency end to end.

    .venv/bin/python tests/bench_infer.py [--folds 5] [--repeats 20] [--bundle DIR] [--study NPZ] [--latency]

Part 1 (torch, numpy and ``pipeline`` only, so it runs on a GPU machine as is): one study's
``[5, 3, 96, 96]`` input through K ResNet-50s (random, or a bundle's trained folds), timed as
  - a plain eager loop over K torchvision ResNet-50s (the reference the issue names),
  - the node's ``FoldEnsemble.predict`` (default: the folds looped, fp32, on any device),
  - on CPU the vmapped variant; on CUDA the opt-in bf16 variants (vmapped, looped, and the
    vmapped one captured in a CUDA graph), with their largest probability difference from
    fp32 on a noise input and on a real study (``--study``: a cached model input).
Part 2 (``--latency``, needs the whole node): a phantom study sent to the node on loopback,
timed from the end of the quiet time (the scan that queues it) to the SR acknowledged by a
local PACS, split by stage. Prints the device it ran on.
Part 3 (``--latency --end-to-end``): what a PACS admin sees. ``egfr-node init`` writes the
configuration (no timer changed; only the port, the destination and the data folder are
set), ``egfr-node serve`` runs it as a service, ``storescu`` (DCMTK) sends each phantom study
(MR series + SEG, then + RTSTRUCT; 5 mm axial and 1 mm 3D), and a pynetdicom PACS notes when
the SR arrives: the median, over ``--studies`` studies each, of the seconds from storescu's
last acknowledged instance to the SR acknowledged, with the rule that queued each job and
where the node's share of the time went. ``--mask-after S``: the images first and the mask S
seconds later (the usual order in a department), timed from the mask's acknowledgment; the
node fits the bias field while the study waits for its mask.
Part 4 (``--throughput --studies 20``): a backlog. The studies are archived first (storescu to
``egfr-node scp``), then ``egfr-node worker`` drains them, one job at a time and with the
default ``worker.parallel_jobs`` (one per core), each on a fresh node: studies per hour.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.models import resnet50

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.model.bundle import FoldFile, Manifest, new_device_uid  # noqa: E402
from pipeline.model.infer import FoldEnsemble, load_fold_weights  # noqa: E402
from pipeline.model.network import build_resnet50  # noqa: E402
from pipeline.prep.params import PreprocessParams  # noqa: E402


def _device_line(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    try:
        from tests.machine import describe

        return f"CPU: {describe()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    except ImportError:
        return f"CPU, torch {torch.__version__}, {torch.get_num_threads()} threads"


def _time(fn, repeats: int, device: torch.device) -> list[float]:  # type: ignore[no-untyped-def]
    for _ in range(3):
        fn()
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - start)
    return out


def _line(name: str, seconds: list[float]) -> str:
    return f"  {name:<50} median {1000 * statistics.median(seconds):8.1f} ms   min {1000 * min(seconds):8.1f} ms"


def _study_input(path: Path) -> np.ndarray:
    """A cached model input (``training.cache``: ``.npz`` with ``array``), ``[S, C, H, W]``."""
    with np.load(path) as data:
        return data["array"].astype(np.float32)


def bench_inference(folds: int, repeats: int, device: torch.device, bundle: Path | None = None,
                    study: Path | None = None) -> None:
    params = PreprocessParams()
    torch.manual_seed(0)
    if bundle is not None:  # trained folds (e.g. from tests/bench_train.py --work): realistic activations
        manifest = Manifest.read(bundle)
        models = [load_fold_weights(bundle / f.file, manifest.normalization) for f in sorted(manifest.folds, key=lambda f: f.fold)]
        folds = len(models)
        what = f"the {folds} trained folds of {bundle}"
    else:  # random initialisation: eval-mode batch norm with default statistics, so logits are large
        models = [build_resnet50().eval() for _ in range(folds)]
        manifest = Manifest(name="bench", version="0", device_uid=new_device_uid(), preprocessing=params,
                            input_shape=(params.slice_count, params.channels, params.output_size),
                            folds=tuple(FoldFile(i, f"f{i}.pt", "0" * 64) for i in range(folds)))
        what = f"{folds} randomly initialised ResNet-50 folds"
    x = np.random.default_rng(0).standard_normal((5, 3, 96, 96)).astype(np.float32)
    print(f"device: {_device_line(device)}")
    print(f"one study = [5, 3, 96, 96] through {what}, {repeats} timed runs")

    plain = [resnet50(num_classes=2).eval().to(device) for _ in range(folds)]
    xt = torch.from_numpy(x).to(device)

    def eager() -> None:
        with torch.inference_mode():
            [m(xt) for m in plain]

    results = {"plain eager loop (torchvision, fp32)": _time(eager, repeats, device)}
    node = FoldEnsemble(manifest, [copy.deepcopy(m) for m in models], device)
    results["node FoldEnsemble.predict (default: looped fp32)"] = _time(lambda: node.predict(x), repeats, device)
    if device.type == "cpu":
        vmapped = FoldEnsemble(manifest, [copy.deepcopy(m) for m in models], device, batched=True)
        results["FoldEnsemble vmapped (grouped convs)"] = _time(lambda: vmapped.predict(x), repeats, device)
    else:
        ensemble = FoldEnsemble(manifest, [copy.deepcopy(m) for m in models], device, mixed_precision=True)
        looped = FoldEnsemble(manifest, [copy.deepcopy(m) for m in models], device, batched=False, mixed_precision=True)
        inputs = {"noise": x} if study is None else {"noise": x, f"study {study.stem[:24]}": _study_input(study)}
        for name, array in inputs.items():
            p32 = node.scores(array)
            print(f"  {name}: bf16 (vmapped | looped) vs fp32 probabilities: max |diff| = "
                  f"{np.abs(ensemble.scores(array) - p32).max():.2e} | {np.abs(looped.scores(array) - p32).max():.2e}"
                  f"  (fp32 range {p32.min():.3f}-{p32.max():.3f})")
        results["FoldEnsemble vmapped bf16 (opt-in)"] = _time(lambda: ensemble.predict(x), repeats, device)
        results["FoldEnsemble looped bf16 (opt-in)"] = _time(lambda: looped.predict(x), repeats, device)
        static = torch.from_numpy(x).to(device).contiguous(memory_format=torch.channels_last)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                ensemble.logits(static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = ensemble.logits(static)

        def replay() -> None:
            static.copy_(xt)
            graph.replay()
            torch.softmax(static_out, dim=-1).cpu()

        results["vmapped bf16 ensemble in a CUDA graph"] = _time(replay, repeats, device)
    for name, seconds in results.items():
        print(_line(name, seconds))


def bench_latency() -> None:
    """A study to the node on loopback; end of quiet time -> SR acknowledged by PACS, by stage."""
    import tempfile
    from dataclasses import replace
    from datetime import timedelta

    from db.migrate import upgrade
    from db.models import utcnow
    from dicom_node.commands.demo import LocalPacs, _send_like_pacs
    from dicom_node.bundles import activate
    from dicom_node.config import Destination
    from dicom_node.store.open import open_runtime
    from dicom_node.receive.server import DicomNode
    from dicom_node.worker import Worker
    from pipeline.phantom import generate_study
    from tests.conftest import make_config

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        bundle = tmp_path / "bundle"
        bundle.mkdir()
        params = PreprocessParams()
        files = []
        for fold in range(5):
            torch.save(build_resnet50().state_dict(), bundle / f"fold{fold}.pt")
            from pipeline.model.bundle import sha256_of

            files.append(FoldFile(fold, f"fold{fold}.pt", sha256_of(bundle / f"fold{fold}.pt")))
        Manifest(name="bench", version="0", device_uid=new_device_uid(), preprocessing=params,
                 input_shape=(5, 3, 96), folds=tuple(files)).write(bundle)
        pacs = LocalPacs(tmp_path / "pacs")
        config = replace(make_config(tmp_path / "data"), destinations=(Destination("pacs", "PACS", "127.0.0.1", pacs.port),))
        upgrade(config.database_url)
        runtime = open_runtime(config)
        activate(runtime.sessions, str(bundle), user="bench_infer", force=True)
        node = DicomNode(config, runtime.archive, runtime.sessions)
        node.start()
        worker = Worker(config, runtime.sessions, runtime.archive)
        print(f"\nstudy latency on {_device_line(torch.device('cpu'))}")
        for geometry in ("axial2d", "axial3d"):
            study = generate_study(tmp_path / geometry, seed=3, geometry=geometry, mask_kind="seg", egfr_positive=False,
                                   patient_index=1)
            _send_like_pacs(study.folder, node.port)
            start = time.perf_counter()
            worker.scan_once(now=utcnow() + timedelta(seconds=60))  # the quiet time ends here
            job = worker.claim_once()
            total = time.perf_counter() - start
            timings = job.result["timings_s"]
            stages = {k: v for k, v in timings.items() if not k.startswith("preprocess.")}
            deliver = total - sum(stages.values())
            detail = ", ".join(f"{k.removeprefix('preprocess.')} {v:.2f}" for k, v in timings.items()
                               if k.startswith("preprocess.") and k != "preprocess.total")
            print(f"  {geometry:<8} quiet end -> SR acknowledged {total:6.2f} s: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()) + f", claim+deliver {deliver:.2f}")
            print(f"           preprocess: {detail}")
        node.stop()
        pacs.stop()
        runtime.close()


def bench_end_to_end(studies: int, bundle: Path | None = None, geometries: tuple[str, ...] = ("axial2d", "axial3d"),
                     n4: bool = True, mask_after: float = 0.0) -> None:
    """storescu -> ``egfr-node serve`` (init's configuration) -> SR at a PACS, per study: from the
    last instance's acknowledgment to the SR's arrival at the PACS (the SR, not the SEG the node
    derives from an RTSTRUCT and sends before it).
    ``mask_after``: the images first, the mask this many seconds later by a second storescu
    (the usual order: a radiologist draws it after the scan); timed from the mask's acknowledgment."""
    import re
    import subprocess
    import tempfile
    import threading

    from pynetdicom import AE, evt
    from pynetdicom.sop_class import Comprehensive3DSRStorage, ComprehensiveSRStorage, EnhancedSRStorage
    from sqlalchemy import select

    from db.engine import make_engine, make_sessionmaker
    from db.models import Job, Study
    from pipeline.phantom import generate_study
    from tests.node.bundles import write_random_bundle
    from tests.node.process import cli, free_port, stop_processes, wait_until_listening

    arrived: dict[str, float] = {}
    lock = threading.Lock()

    def on_store(event: evt.Event) -> int:  # the SR's arrival (not the SEG derived from an RTSTRUCT, sent first)
        if str(event.dataset.SOPClassUID) in (Comprehensive3DSRStorage, EnhancedSRStorage, ComprehensiveSRStorage):
            with lock:
                arrived.setdefault(str(event.dataset.StudyInstanceUID), time.perf_counter())
        return 0x0000

    pacs = AE(ae_title="PACS")
    for sop_class in (Comprehensive3DSRStorage, EnhancedSRStorage):
        pacs.add_supported_context(sop_class)
    from pynetdicom import AllStoragePresentationContexts
    for context in AllStoragePresentationContexts:
        if len(pacs.supported_contexts) < 120:
            pacs.add_supported_context(context.abstract_syntax)
    server = pacs.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        config = tmp_path / "egfr-node.toml"
        done = cli(config, "init", "--data-dir", str(tmp_path / "data"))
        if done.returncode != 0:
            raise SystemExit(f"egfr-node init failed: {done.stderr}")
        port = free_port()
        text = re.sub(r"(?m)^port = 11112$", f"port = {port}", config.read_text(), count=1)
        config.write_text(text + f'\n[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\n'
                                 f"port = {server.server_address[1]}\n")
        if bundle is None:  # the default preprocessing (N4 on, as the paper), random folds: timing only
            bundle = write_random_bundle(tmp_path / "bundle", folds=5, params=PreprocessParams(bias_correction=n4))
        done = cli(config, "models", "activate", str(bundle), "--force", timeout=300)
        if done.returncode != 0:
            raise SystemExit(f"models activate failed: {done.stdout}{done.stderr}")
        log_file = (tmp_path / "node.log").open("w")
        node = subprocess.Popen([sys.executable, "-m", "dicom_node.cli", "--config", str(config), "serve"],
                                stdout=log_file, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[1])
        try:
            wait_until_listening(port, node)
            engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'egfr-node.sqlite3'}")
            sessions = make_sessionmaker(engine)
            from tests.machine import describe

            order = (f"images, then the mask {mask_after:g} s later (last instance: the mask)" if mask_after > 0
                     else "images and mask in one storescu")
            print(f"\nend to end on CPU: {describe()}: egfr-node serve with init's configuration, "
                  f"storescu -> SR at a PACS, {studies} studies each, N4 {'on' if n4 else 'off (as the demo bundle)'}; "
                  f"{order}")
            index = 0
            for geometry in geometries:
                for mask_kind in ("seg", "rtstruct"):
                    seconds, because, stages = [], [], []
                    for _ in range(studies + 1):  # the first warms the worker (bundle loaded), not counted
                        index += 1
                        study = generate_study(tmp_path / "studies" / f"{index}", seed=11, geometry=geometry,
                                               mask_kind=mask_kind, egfr_positive=bool(index % 2), patient_index=index)
                        files = sorted(study.folder.rglob("*.dcm"))
                        images = [f for f in files if f.parent.name.startswith("MR")]
                        parts = [images, [f for f in files if f not in images]] if mask_after > 0 else [files]
                        for number, part in enumerate(parts):
                            if number:
                                time.sleep(mask_after)
                            sent = subprocess.run(["storescu", "-R", "-aet", "PACS", "-aec", "EGFR_NODE", "127.0.0.1",
                                                   str(port), *map(str, part)], capture_output=True, text=True)
                            acknowledged = time.perf_counter()
                            if sent.returncode != 0:
                                raise SystemExit(f"storescu failed: {sent.stderr[-500:]}")
                        deadline = acknowledged + 120
                        while study.study_uid not in arrived and time.perf_counter() < deadline:
                            time.sleep(0.02)
                        if study.study_uid not in arrived:
                            with sessions() as session:
                                jobs = [(j.id, j.state, j.reason) for j in session.scalars(select(Job).join(Study).where(
                                    Study.study_uid == study.study_uid))]
                            raise SystemExit(f"no SR for study {study.study_uid} ({geometry}, {mask_kind}) after 120 s; "
                                             f"jobs {jobs}; node {'running' if node.poll() is None else node.returncode}")
                        while time.perf_counter() < deadline:  # the SR leaves before its job is marked done
                            with sessions() as session:
                                job = session.scalars(select(Job).join(Study).where(
                                    Study.study_uid == study.study_uid).order_by(Job.id.desc())).first()
                                rule = (job.queued_because or "?").split(":")[0] if job else "?"
                                timings = (job.result or {}).get("timings_s", {}) if job else {}
                            if timings:
                                break
                            time.sleep(0.05)
                        if index % (studies + 1) != 1:
                            seconds.append(arrived[study.study_uid] - acknowledged)
                            because.append(rule)
                            stages.append(timings)
                    keys = [k for k in stages[0] if not k.startswith("preprocess.")
                            or k in ("preprocess.brain_mask", "preprocess.bias_field")]
                    split = ", ".join(f"{k} {statistics.median(t.get(k, 0.0) for t in stages):.2f}" for k in keys)
                    print(f"  {geometry:<8} {mask_kind:<8} last instance acknowledged -> SR acknowledged: median "
                          f"{statistics.median(seconds):5.2f} s (min {min(seconds):.2f}, max {max(seconds):.2f}); "
                          f"queued by {', '.join(sorted(set(because)))}; in the job: {split}")
            engine.dispose()
        finally:
            stop_processes([node])
            server.shutdown()
            log_file.close()


def bench_throughput(studies: int, bundle: Path | None = None, n4: bool = True, geometry: str = "axial2d") -> None:
    """A backlog: ``studies`` complete studies are in the archive (sent by storescu to ``egfr-node
    scp``), then ``egfr-node worker`` starts and drains them, once with one job at a time
    (``worker.parallel_jobs = 1``) and once with the default (one per core); studies per hour
    from the first job's start to the last job's end, each run on a fresh copy of the node."""
    import re
    import subprocess
    import tempfile

    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from sqlalchemy import func, select

    from db.engine import make_engine, make_sessionmaker
    from db.models import Job
    from pipeline.phantom import generate_study
    from tests.machine import describe
    from tests.node.bundles import write_random_bundle
    from tests.node.process import cli, free_port, stop_processes, wait_until_listening

    pacs = AE(ae_title="PACS")
    for context in AllStoragePresentationContexts[:120]:
        pacs.add_supported_context(context.abstract_syntax)
    server = pacs.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)])
    root = Path(__file__).resolve().parents[1]
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        folders = [generate_study(tmp_path / "studies" / f"{n}", seed=12, geometry=geometry,
                                  mask_kind=("seg", "rtstruct")[n % 2], egfr_positive=bool(n % 3), patient_index=n).folder
                   for n in range(studies)]
        if bundle is None:  # the default preprocessing (N4 on, as the paper), random folds: timing only
            bundle = write_random_bundle(tmp_path / "bundle", folds=5, params=PreprocessParams(bias_correction=n4))
        print(f"\nthroughput on CPU: {describe()}: {studies} {geometry} studies queued (SEG and RTSTRUCT), "
              f"N4 {'on' if n4 else 'off'}, egfr-node worker with init's configuration")
        for label, parallel in (("one at a time (parallel_jobs = 1)", 1), ("default (parallel_jobs = 0: one per core)", 0)):
            run = tmp_path / f"run-{parallel}"
            config = run / "egfr-node.toml"
            run.mkdir()
            done = cli(config, "init", "--data-dir", str(run / "data"))
            if done.returncode != 0:
                raise SystemExit(f"egfr-node init failed: {done.stderr}")
            port = free_port()
            text = re.sub(r"(?m)^port = 11112$", f"port = {port}", config.read_text(), count=1)
            text = re.sub(r"(?m)^parallel_jobs = 0$", f"parallel_jobs = {parallel}", text, count=1)
            config.write_text(text + f'\n[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\n'
                                     f"port = {server.server_address[1]}\n")
            done = cli(config, "models", "activate", str(bundle), "--force", timeout=300)
            if done.returncode != 0:
                raise SystemExit(f"models activate failed: {done.stdout}{done.stderr}")
            with (run / "scp.log").open("w") as log_file:
                scp = subprocess.Popen([sys.executable, "-m", "dicom_node.cli", "--config", str(config), "scp"],
                                       stdout=log_file, stderr=subprocess.STDOUT, cwd=root)
                try:
                    wait_until_listening(port, scp)
                    for folder in folders:
                        sent = subprocess.run(["storescu", "-R", "-aet", "PACS", "-aec", "EGFR_NODE", "+sd", "+r",
                                               "127.0.0.1", str(port), str(folder)], capture_output=True, text=True)
                        if sent.returncode != 0:
                            raise SystemExit(f"storescu failed: {sent.stderr[-500:]}")
                finally:
                    stop_processes([scp])
            engine = make_engine(f"sqlite:///{run / 'data' / 'egfr-node.sqlite3'}")
            sessions = make_sessionmaker(engine)
            with (run / "worker.log").open("w") as log_file:
                worker = subprocess.Popen([sys.executable, "-m", "dicom_node.cli", "--config", str(config), "worker"],
                                          stdout=log_file, stderr=subprocess.STDOUT, cwd=root)
                try:
                    deadline = time.monotonic() + 60 + 60 * studies
                    while time.monotonic() < deadline:
                        with sessions() as session:
                            finished = session.scalar(select(func.count()).select_from(Job).where(
                                Job.state.in_(["done", "failed"])))
                        if finished == studies:
                            break
                        time.sleep(0.5)
                    else:
                        raise SystemExit(f"{label}: {finished} of {studies} jobs finished in time; see {run}/worker.log")
                finally:
                    stop_processes([worker])
            with sessions() as session:
                jobs = session.scalars(select(Job)).all()
                failed = [(j.id, j.reason) for j in jobs if j.state.value != "done"]
                if failed:
                    raise SystemExit(f"{label}: jobs failed: {failed}")
                window = (max(j.finished_at for j in jobs) - min(j.started_at for j in jobs)).total_seconds()
                stage = statistics.median((j.result or {}).get("timings_s", {}).get("preprocess.bias_field", 0.0)
                                          for j in jobs)
            engine.dispose()
            rates[label] = studies / window * 3600.0
            print(f"  {label:<42} {window:6.1f} s for {studies} studies: {rates[label]:6.0f} studies/hour "
                  f"(N4 median {stage:.2f} s per study)")
        one, default = rates.values()
        print(f"  the default drains a backlog {default / one:.2f} times as fast as one at a time")
    server.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bundle", type=Path, help="a model bundle folder: time and check its trained folds")
    parser.add_argument("--study", type=Path, help="a cached model input (.npz of the training cache) for the bf16 check")
    parser.add_argument("--latency", action="store_true", help="also the end-to-end study latency (CPU, needs the node)")
    parser.add_argument("--end-to-end", action="store_true",
                        help="with --latency: storescu -> egfr-node serve (init's configuration) -> SR at a PACS")
    parser.add_argument("--studies", type=int, default=5, help="studies per geometry and mask kind (--end-to-end)")
    parser.add_argument("--geometries", default="axial2d,axial3d", help="phantom geometries (--end-to-end)")
    parser.add_argument("--no-n4", action="store_true", help="--end-to-end with a bundle trained without N4")
    parser.add_argument("--mask-after", type=float, default=0.0,
                        help="--end-to-end: send the images, then the mask this many seconds later")
    parser.add_argument("--skip-ensemble", action="store_true", help="only the latency parts")
    parser.add_argument("--throughput", action="store_true",
                        help="a backlog of --studies queued studies drained one at a time and by the default worker")
    args = parser.parse_args()
    if not args.skip_ensemble:
        bench_inference(args.folds, args.repeats, torch.device(args.device), args.bundle, args.study)
    if args.latency:
        bench_latency()
    if args.latency and args.end_to_end:
        bench_end_to_end(args.studies, args.bundle, tuple(args.geometries.split(",")), n4=not args.no_n4,
                         mask_after=args.mask_after)
    if args.throughput:
        bench_throughput(args.studies, args.bundle, n4=not args.no_n4, geometry=args.geometries.split(",")[0])


if __name__ == "__main__":
    main()
