"""A/B of the node's ingest at one association between two checkouts of this repository
(for example main before and after a refactor), interleaved so that the machine's drift
falls on both alike:

    git worktree add /tmp/before <commit>
    .venv/bin/python tests/bench_ingest_ab.py /tmp/before . [--rounds 10] [--count 300]

Each round runs ``tests/bench_ingest.py``'s ``bench_node`` (storescu -> the node, fsync on,
one receive process) twice from each checkout, in its own process, alternating which goes
first; it prints every figure, then each side's mean, median and best, and B / A.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

_ONE_SIDE = """
import shutil, sys, tempfile
from pathlib import Path
root, count, runs = Path(sys.argv[1]).resolve(), int(sys.argv[2]), int(sys.argv[3])
sys.path[:0] = [str(root), str(root / "tests")]
import bench_ingest
import dicom_node
from tests.dicom_factory import mr_series, write_all
assert Path(dicom_node.__file__).resolve().is_relative_to(root), dicom_node.__file__
work = Path(tempfile.mkdtemp(prefix="egfr-bench-ab-"))
try:
    files = write_all(mr_series(count, rows=256, columns=256), work / "study")
    for i in range(runs):
        print(count / bench_ingest.bench_node(files, work / f"n{i}", 1, True, 1), flush=True)
finally:
    shutil.rmtree(work, ignore_errors=True)
"""


def _side(root: Path, count: int, runs: int) -> list[float]:
    done = subprocess.run([sys.executable, "-c", _ONE_SIDE, str(root), str(count), str(runs)], cwd=root,
                          capture_output=True, text=True, check=True)
    return [float(line) for line in done.stdout.split()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="checkout A (before)")
    parser.add_argument("b", type=Path, help="checkout B (after)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--count", type=int, default=300, help="MR slices a run sends (default 300)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.machine import describe

    print(f"machine: {describe()}; {args.count} MR slices a run, storescu, 1 association, 1 receive process")
    figures: dict[str, list[float]] = {"A": [], "B": []}
    for i in range(args.rounds):
        order = [("A", args.a), ("B", args.b)] if i % 2 == 0 else [("B", args.b), ("A", args.a)]
        for name, root in order:
            got = _side(root, args.count, 2)
            figures[name] += got
            print(f"  round {i + 1} {name}: " + ", ".join(f"{v:.1f}" for v in got) + " instances/s", flush=True)
    for name, root in (("A", args.a), ("B", args.b)):
        v = figures[name]
        print(f"{name} {root}: mean {statistics.mean(v):.1f}, median {statistics.median(v):.1f}, best {max(v):.1f} "
              f"instances/s (n={len(v)}, sd {statistics.stdev(v):.1f})")
    a, b = figures["A"], figures["B"]
    print(f"B / A: mean {statistics.mean(b) / statistics.mean(a):.3f}, median "
          f"{statistics.median(b) / statistics.median(a):.3f}, best {max(b) / max(a):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
