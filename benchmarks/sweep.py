"""Sweep throughput: cells per minute for the local and the Ray backend on the same grid.

Both backends measure the same grid in one process, each into a fresh folder (so
nothing is reused), after the model's material (capture, probes, neurons, vectors,
baseline) is prepared once in a shared folder the timed runs copy — the timing is
of cells only, plus each backend's start-up (Ray's workers load the model). Prints
both rates and, last, ``ray_over_local=<cells/min ratio>``.

    python benchmarks/sweep.py [--model embedded|PATH] [--workers 2] [--strengths 0.5,1,2,4]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--strengths", default="0.5,1,2,4")
    parser.add_argument("--traits", default="E,N")
    args = parser.parse_args()

    from traitlens.sweep.cells import expand
    from traitlens.sweep.config import SweepConfig
    from traitlens.sweep.run import run_sweep
    from traitlens.sweep.worker import prepare

    config = SweepConfig(
        models=[args.model],
        traits=args.traits.split(","),
        methods=["mean_diff", "prompt", "hybrid"],
        bands=["auto"],
        strengths=[float(s) for s in args.strengths.split(",")],
    )
    n_cells = len(expand(config))
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "material"
        prepare(args.model, config, base)  # material + baselines, shared by both runs
        rates = {}
        for backend in ("local", "ray"):
            out = Path(tmp) / backend
            shutil.copytree(base, out)
            started = time.perf_counter()
            run_sweep(config, out, backend=backend, workers=args.workers, log=lambda m: None)
            minutes = (time.perf_counter() - started) / 60
            rates[backend] = n_cells / minutes
            print(
                f"{backend:5s}: {n_cells} cells in {minutes * 60:.1f} s = "
                f"{rates[backend]:.1f} cells/min",
                flush=True,
            )
    print(f"ray_over_local={rates['ray'] / rates['local']:.3f}")


if __name__ == "__main__":
    main()
