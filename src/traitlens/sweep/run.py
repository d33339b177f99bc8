"""Running a sweep: local or on Ray, resumable, one row per cell appended as it lands.

``OUT/cells.jsonl`` is the sweep's ledger: one JSON row per measured cell, written by
the driver alone (workers return rows; nothing else writes the file), each with the
cell's key over its definition and material. A rerun skips every cell whose key has
an ``ok`` row — a changed cell definition or changed material is a new key, so it is
measured, and the old row stays in the ledger under its own key. Failed cells are
recorded with their error and retried on the next run. ``OUT/cells.csv`` and
``OUT/cells.parquet`` are the merged table of the latest row per key.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from traitlens.artifact_io import atomic_path, check_writable, write_json
from traitlens.errors import DataError, EngineError
from traitlens.sweep.cells import Cell, expand
from traitlens.sweep.config import SweepConfig
from traitlens.sweep.worker import SweepWorker

Log = Callable[[str], None]
LEDGER = "cells.jsonl"
CURRENT = "current_keys.json"
"""The keys of the grid last run into the folder: what tables, report and calibration read."""


def read_ledger(out: Path) -> list[dict[str, Any]]:
    """Every row of ``OUT/cells.jsonl`` (a torn last line, from a kill mid-write, is skipped)."""
    path = out / LEDGER
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def latest_rows(out: Path) -> list[dict[str, Any]]:
    """The last row of each key, in ledger order."""
    latest: dict[str, dict[str, Any]] = {}
    for row in read_ledger(out):
        latest[row.get("key") or row["name"] + row.get("model", "")] = row
    return list(latest.values())


def current_rows(out: Path) -> list[dict[str, Any]]:
    """The latest row of each cell of the grid last run into ``out`` (every latest row
    when the folder predates ``current_keys.json``)."""
    rows = latest_rows(out)
    path = out / CURRENT
    if not path.exists():
        return rows
    keys = set(json.loads(path.read_text(encoding="utf-8")))
    return [r for r in rows if r.get("key") in keys]


def _append(out: Path, row: dict[str, Any]) -> None:
    path = out / LEDGER
    if path.exists() and path.stat().st_size:
        with path.open("rb") as handle:  # a kill mid-write leaves a torn last line:
            handle.seek(-1, 2)  # start the next row on a line of its own
            torn = handle.read(1) != b"\n"
    else:
        torn = False
    with path.open("a", encoding="utf-8") as handle:
        if torn:
            handle.write("\n")
        handle.write(json.dumps(row, allow_nan=True, default=str) + "\n")
        handle.flush()


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    flat = {}
    for k, v in row.items():
        if k == "traceback":
            continue
        if isinstance(v, dict):
            flat.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        elif isinstance(v, list):
            flat[k] = ",".join(str(x) for x in v)
        else:
            flat[k] = v
    return flat


def write_tables(out: Path, keys: set[str] | None = None) -> tuple[Path, Path | None]:
    """``cells.csv`` (always) and ``cells.parquet`` (when pyarrow is installed): the latest
    row of each cell of the current grid (``keys``; all keys when ``None``). Rows of other
    grids or older material stay in the ledger, never in these tables."""
    import csv

    rows = [_flat(r) for r in latest_rows(out) if keys is None or r.get("key") in keys]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    csv_path = out / "cells.csv"
    with atomic_path(csv_path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return csv_path, None
    table = pa.table({c: [_cell_value(r.get(c)) for r in rows] for c in columns})
    parquet = out / "cells.parquet"
    with atomic_path(parquet) as tmp:
        pq.write_table(table, str(tmp))
    return csv_path, parquet


def _cell_value(value: Any) -> Any:
    # one type per column for parquet: numbers stay numbers, everything else is text
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)


def _local(config: SweepConfig, out: Path, device: str) -> Iterator[Any]:
    worker = SweepWorker(config.model_dump(), str(out), device)

    def keys(model: str, cells: Sequence[Cell]) -> list[str]:
        return worker.keys(model, [c.to_dict() for c in cells])

    def run(cells: Sequence[tuple[Cell, str]]) -> Iterator[dict[str, Any]]:
        for cell, key in cells:
            yield worker.measure(cell.to_dict(), key)

    yield keys, run


def check_address(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds on an unreachable ``--address`` (``ray.init`` itself waits minutes).
    ``auto`` (Ray's own lookup of a local cluster) is left to Ray."""
    import socket

    if address == "auto":
        return
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise DataError(
            f"--address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379 or ray://head:10001)"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise EngineError(
            f"cannot reach a Ray cluster at {address} ({exc.strerror or exc}); start one with "
            "`ray start --head` and pass its address, or leave --address out for a local one"
        ) from exc


def _ray(
    config: SweepConfig, out: Path, device: str, workers: int, address: str | None, log: Log
) -> Iterator[Any]:
    try:
        import ray
    except ImportError as exc:
        raise EngineError("--backend ray needs Ray: pip install 'traitlens[sweep]'") from exc
    if address:
        check_address(address)
    started_here = not ray.is_initialized()
    if started_here:
        try:
            if address:
                ray.init(address=address, log_to_driver=False, include_dashboard=False)
            else:
                ray.init(num_cpus=workers, log_to_driver=False, include_dashboard=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise EngineError(
                f"cannot reach a Ray cluster at {address!r}: {exc}. Start one with `ray start "
                "--head` and pass its address, or leave --address out for a local instance"
            ) from exc
    try:
        resources = ray.cluster_resources()
        threads = max(1, int(resources.get("CPU", workers)) // workers)
        gpus = 0.0
        if device.startswith("cuda") or config.device_map:
            # each worker gets its own GPU(s): one for --device cuda, an equal share of the
            # cluster's for device_map (a model spread over several)
            have = int(resources.get("GPU", 0))
            if have < workers:
                raise EngineError(
                    f"the Ray cluster has {have} GPU(s) but {workers} worker(s) each need one; "
                    f"pass --workers {max(1, have)} or add GPUs"
                    + (" (no GPU at all: use --device cpu)" if have == 0 else "")
                )
            gpus = float(have // workers) if config.device_map else 1.0
        actor: Any = ray.remote(num_cpus=1, num_gpus=gpus)(SweepWorker)
        pool: list[Any] = [
            actor.remote(config.model_dump(), str(out.resolve()), device, threads)
            for _ in range(workers)
        ]
        log(f"ray: {workers} worker(s), {threads} thread(s) each")

        def keys(model: str, cells: Sequence[Cell]) -> list[str]:
            # every worker prepares (and keeps) the model; the first computes, the rest load
            mine = [c.to_dict() for c in cells]
            first = ray.get(pool[0].keys.remote(model, mine))
            others = ray.get([w.keys.remote(model, mine[:1]) for w in pool[1:]])
            check_same_material(model, list(first), [list(k) for k in others])
            return list(first)

        def run(cells: Sequence[tuple[Cell, str]]) -> Iterator[dict[str, Any]]:
            from ray.util import ActorPool

            yield from ActorPool(pool).map_unordered(
                lambda w, item: w.measure.remote(item[0].to_dict(), item[1]), list(cells)
            )

        yield keys, run
    finally:
        if started_here:
            ray.shutdown()


def check_same_material(model: str, first: list[str], others: list[list[str]]) -> None:
    """Refuse workers whose material differs from the first worker's.

    A cell's key covers its material (capture, probes, vectors, neurons), so the key of
    one cell compares the material. Workers on several machines without shared storage
    each build their own, and nothing else would notice that one cell key was measured
    with different vectors on different nodes."""
    for number, keys in enumerate(others, start=1):
        if keys[:1] != first[:1]:
            raise DataError(
                f"ray worker {number} built different material for {model} than worker 0 "
                f"(cell key {keys[0][:12] if keys else 'none'} vs {first[0][:12]}): the workers "
                "do not see the same --out folder. Put --out on storage every node mounts "
                "(e.g. NFS), or run the sweep on one machine"
            )


@contextmanager
def folder_lock(directory: Path) -> Iterator[None]:
    """Hold ``OUT/sweep.lock`` for the whole run: a second sweep into the same folder
    (it would append to the same ledger and build the same material) is refused."""
    import fcntl
    import os

    path = directory / "sweep.lock"
    try:  # never through a symlink: opening it must not truncate what a link points to
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as exc:
        raise DataError(
            f"cannot open the sweep lock {path} ({exc.strerror}); it must be a plain file — "
            "remove it, or pass another --out"
        ) from None
    with os.fdopen(fd, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise DataError(
                f"another sweep is running into {directory} (pid {holder}); wait for it to "
                "finish, or pass another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_sweep(
    config: SweepConfig,
    out: str | Path,
    *,
    backend: str = "local",
    workers: int = 2,
    address: str | None = None,
    device: str = "cpu",
    log: Log = print,
) -> list[dict[str, Any]]:
    """Measure every cell of ``config`` not yet in ``OUT/cells.jsonl``; returns the latest
    row of every cell of this grid."""
    if backend not in ("local", "ray"):
        raise DataError(f"unknown backend {backend!r}; use local or ray")
    if workers < 1:
        raise DataError(f"workers must be >= 1, got {workers}")
    directory = Path(out)
    check_writable(directory)
    config.check_grid()
    with folder_lock(directory):
        return _run_locked(config, directory, backend, workers, address, device, log)


def _run_locked(
    config: SweepConfig,
    directory: Path,
    backend: str,
    workers: int,
    address: str | None,
    device: str,
    log: Log,
) -> list[dict[str, Any]]:
    write_json(directory / "sweep_config.json", config.model_dump(mode="json"))
    cells = expand(config)
    started = time.perf_counter()
    make = (
        _local(config, directory, device)
        if backend == "local"
        else _ray(config, directory, device, workers, address, log)
    )
    done_keys = {r["key"] for r in read_ledger(directory) if r.get("status") == "ok"}
    current: set[str] = set()
    measured = 0
    for keys, run in make:
        # model by model: each worker loads a model once, measures all its cells, moves on
        for model in config.models:
            log(f"[{model}] material (capture, probes, neurons, vectors, baseline)")
            mine = [c for c in cells if c.model == model]
            mine_keys = keys(model, mine)
            current.update(mine_keys)
            write_json(directory / CURRENT, sorted(current))  # before any cell: a kill keeps it
            todo = [(c, k) for c, k in zip(mine, mine_keys, strict=True) if k not in done_keys]
            log(f"[{model}] {len(mine) - len(todo)} of {len(mine)} cells already measured")
            for number, row in enumerate(run(todo), start=1):
                _append(directory, row)
                measured += 1
                status = "" if row["status"] == "ok" else f"  FAILED: {row['error']}"
                log(
                    f"  [{number}/{len(todo)}] {row['model']} {row['name']} "
                    f"({row['seconds']:.1f} s){status}"
                )
    write_tables(directory, current)
    write_json(directory / CURRENT, sorted(current))
    minutes = (time.perf_counter() - started) / 60
    log(
        f"{measured} cell(s) measured in {minutes:.1f} min"
        + (f" ({measured / minutes:.1f} cells/min)" if measured and minutes > 0 else "")
    )
    return [r for r in latest_rows(directory) if r.get("key") in current]
