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
    from dicom_node.runtime import open_runtime
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bundle", type=Path, help="a model bundle folder: time and check its trained folds")
    parser.add_argument("--study", type=Path, help="a cached model input (.npz of the training cache) for the bf16 check")
    parser.add_argument("--latency", action="store_true", help="also the end-to-end study latency (CPU, needs the node)")
    args = parser.parse_args()
    bench_inference(args.folds, args.repeats, torch.device(args.device), args.bundle, args.study)
    if args.latency:
        bench_latency()


if __name__ == "__main__":
    main()
