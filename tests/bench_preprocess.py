"""Benchmark: one study's preprocessing on a 1 mm 3D volume (issue 3: under 5 s on 2 cores).

A script, not a test: ``.venv/bin/python tests/bench_preprocess.py [--repeats 3]
[--geometry axial3d] [--shrink-mm 4 5 6]``. Generates one phantom study
(``pipeline.phantom``; a synthetic head of 256x256x176 1 mm when the phantom is not
importable), loads it once with ``load_study``, then runs ``preprocess`` ``--repeats``
times per N4 shrink voxel size and prints per-step wall times (median and minimum), the N4
share, the CPU time, the device and the volume size. The machine's load average is printed
too: other processes on a shared 2-core machine inflate wall times.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.machine import describe  # noqa: E402

from pipeline.prep.params import PreprocessParams  # noqa: E402
from pipeline.prep.preprocess import preprocess  # noqa: E402
from pipeline.load.study import LoadedStudy, load_study  # noqa: E402


def synthetic_study() -> LoadedStudy:
    """256x256x176 1 mm head: ellipsoid brain, scalp shell, a 9 mm lesion, a smooth bias field."""
    rng = np.random.default_rng(0)
    ni, nj, nk = 256, 256, 176
    k, j, i = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij", sparse=True)
    x, y, z = i - 127.5, j - 127.5, k - 87.5
    rb = (x / 68) ** 2 + (y / 85) ** 2 + (z / 62) ** 2
    rs = (x / 78) ** 2 + (y / 95) ** 2 + (z / 72) ** 2
    img = np.full((nk, nj, ni), 3.0, dtype=np.float32)
    img[(rs < 1) & (rs > 0.87)] = 140
    img[rb < 1] = 80
    img[rb < 0.45] = 110
    lesion = ((x - 30) ** 2 + (y + 20) ** 2 + (z - 15) ** 2) <= 81
    img[lesion] = 170
    img *= np.exp(0.3 * (x / 80 + 0.6 * y / 90 - 0.5 * (z / 60) ** 2)).astype(np.float32)
    img = np.abs(img + rng.normal(0, 2.0, img.shape).astype(np.float32))
    image = sitk.GetImageFromArray(img)
    mask = sitk.GetImageFromArray(lesion.astype(np.uint8))
    mask.CopyInformation(image)
    return LoadedStudy(
        study_uid="2.25.1", image=image, lesion=mask, brain=None, series_uid="2.25.2",
        mask_sop_uid="2.25.3", mask_kind="SEG", lesion_number=1, lesion_label="lesion",
        source_sop_uids=tuple((f"2.25.10.{n}",) for n in range(nk)), selection={},
    )


def phantom_study(geometry: str, workdir: Path) -> tuple[LoadedStudy, float]:
    from pipeline.phantom import generate_study

    phantom = generate_study(workdir, seed=11, geometry=geometry, mask_kind="seg")
    start = time.perf_counter()
    study = load_study(phantom.folder)
    return study, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--geometry", default="axial3d")
    parser.add_argument("--shrink-mm", type=float, nargs="+", default=[PreprocessParams().n4_shrink_spacing_mm])
    parser.add_argument("--synthetic", action="store_true", help="skip the phantom, use the synthetic head")
    args = parser.parse_args(argv)

    print(f"device: {describe()}, SimpleITK {sitk.Version.VersionString()}, "
          f"ITK threads {sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()}")
    with tempfile.TemporaryDirectory() as tmp:
        load_s = float("nan")
        source = "synthetic head"
        if not args.synthetic:
            try:
                study, load_s = phantom_study(args.geometry, Path(tmp))
                source = f"phantom {args.geometry}"
            except ImportError as exc:
                print(f"phantom not available ({exc}); using the synthetic head")
                study = synthetic_study()
        else:
            study = synthetic_study()
    size, spacing = study.image.GetSize(), study.image.GetSpacing()
    print(f"volume: {source}, {size[0]}x{size[1]}x{size[2]} voxels, spacing "
          f"{'x'.join(f'{s:.2f}' for s in spacing)} mm; load_study "
          f"{'n/a' if load_s != load_s else f'{load_s:.2f} s'} (not repeated)")
    preprocess(study, PreprocessParams(bias_correction=False))  # warm-up: imports, allocator
    for shrink_mm in args.shrink_mm:
        params = dataclasses.replace(PreprocessParams(), n4_shrink_spacing_mm=shrink_mm)
        runs, cpu = [], []
        for _ in range(args.repeats):
            load = os.getloadavg()[0]
            c0 = time.process_time()
            out = preprocess(study, params)
            cpu.append(time.process_time() - c0)
            runs.append(out.provenance["timings_s"])
        steps = list(runs[0])
        med = {s: statistics.median(r[s] for r in runs) for s in steps}
        low = {s: min(r[s] for r in runs) for s in steps}
        bias = out.provenance["bias_field"]
        print(f"\nN4 shrink {shrink_mm:g} mm -> factors {bias['shrink']}, box {bias['box_size']}, "
              f"{args.repeats} runs, load average before last run {load:.2f}")
        for s in steps:
            print(f"  {s:<18} median {med[s]:7.3f} s   min {low[s]:7.3f} s")
        print(f"  N4 share of total: {med['bias_field'] / med['total']:.0%} (median)")
        print(f"  CPU time per run (all threads): median {statistics.median(cpu):.2f} s")
        verdict = "under" if med["total"] < 5.0 else "OVER"
        print(f"  total median {med['total']:.2f} s: {verdict} the 5 s budget")
        if load_s == load_s:
            print(f"  with load_study (DICOM -> volume + mask, once): {load_s + med['total']:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
