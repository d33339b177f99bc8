"""Measured rows keyed by their inputs, shared by every design's evaluation stage.

A row is one condition (an intervention or its control, or the baseline) measured
on held-out material. It is stored at ``rows/NAME--KEY16.json`` as
``{"provenance", "data"}``: a changed edit, size, read-out or material gives a new
key and so a new file; rows of other configurations are kept, never relabelled,
and going back reuses them.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch

from traitlens.artifact_io import read_json, write_json
from traitlens.errors import TraitlensError
from traitlens.neurons.selected import SelectedNeurons
from traitlens.provenance import Provenance, data_digest, describe_changes

Log = Callable[[str], None]


def describe_intervention(intervention: Any) -> dict[str, Any]:
    """A JSON-able description of an intervention value, tensors as digests: what an
    evaluation row's key is computed over (same edit ⇔ same description)."""

    def value(item: Any) -> Any:
        if isinstance(item, torch.Tensor):
            return data_digest(tensors=[item])
        if is_dataclass(item) and not isinstance(item, type):
            return {
                "type": type(item).__name__,
                **{
                    f.name: value(getattr(item, f.name))
                    for f in fields(item)
                    if f.name not in ("identity", "source")
                },
            }
        if isinstance(item, (list, tuple)):
            return [value(v) for v in item]
        return item

    return dict(value(intervention))


def row_name(*parts: Any) -> str:
    text = "__".join(str(p) for p in parts)
    return text.replace("|", "-").replace("/", "-").replace(" ", "")


def row_path(rows_dir: Path, name: str, prov: Provenance) -> Path:
    return rows_dir / f"{name}--{prov.key[:16]}.json"


def previous_row(rows_dir: Path, name: str) -> Provenance | None:
    """The most recent saved row of this name under any key (to say what changed)."""
    best = None
    for path in rows_dir.glob(f"{name}--*.json"):
        if best is None or path.stat().st_mtime > best.stat().st_mtime:
            best = path
    if best is None:
        return None
    try:
        return Provenance.from_dict(read_json(best)["provenance"])
    except (TraitlensError, KeyError, TypeError):
        return None


class RowData(Protocol):
    """What a design measures per row: a value that writes and reads its JSON form."""

    def to_dict(self) -> dict[str, Any]: ...


R = TypeVar("R", bound=RowData)


def load_row(rows_dir: Path, name: str, prov: Provenance, kind: type[R]) -> R | None:
    """The saved data of this row under this key as ``kind``, or None (absent or
    unreadable: measured again)."""
    path = row_path(rows_dir, name, prov)
    if not path.exists():
        return None
    try:
        saved = read_json(path)
        if saved.get("provenance", {}).get("key") == prov.key:
            return kind.from_dict(dict(saved["data"]))  # type: ignore[attr-defined,no-any-return]
    except (TraitlensError, KeyError, TypeError):
        pass  # unreadable row: measure it again
    return None


def measured_row(
    rows_dir: Path, name: str, prov: Provenance, compute: Callable[[], R], kind: type[R]
) -> R:
    """The row's data: reused when saved under this key, else computed and saved."""
    data = load_row(rows_dir, name, prov, kind)
    if data is None:
        data = compute()
        write_json(
            row_path(rows_dir, name, prov),
            {"provenance": prov.to_dict(), "data": data.to_dict()},
            allow_nan=True,
        )
    return data


def log_plan(rows_dir: Path, plan: Sequence[tuple[str, Provenance]], log: Log) -> set[str]:
    """Say how many rows are reused and why the others are measured; returns the names to do."""
    todo = [(n, p) for n, p in plan if not row_path(rows_dir, n, p).exists()]
    reasons: Counter[str] = Counter()
    for name, prov in todo:
        before = previous_row(rows_dir, name)
        changes = ["new"] if before is None else describe_changes(before.inputs, prov.inputs)
        if len(changes) > 1:  # a changed size explains the changed edit ("data")
            changes = [c for c in changes if c != "data changed"]
        reasons["; ".join(changes)] += 1
    for reason, count in reasons.most_common():
        log(f"  {count} row(s) to measure: {reason}")
    log(f"  {len(plan) - len(todo)} of {len(plan)} rows reused (same inputs)")
    return {n for n, _ in todo}


def evaluate_rows(
    rows_dir: Path,
    baseline: tuple[Provenance, Callable[[], R]],
    rows: Sequence[tuple[str, Provenance, Callable[[], R]]],
    kind: type[R],
    log: Log,
    *,
    say: Callable[[int], bool] = lambda number: True,
) -> tuple[R, dict[str, R], dict[str, str]]:
    """The evaluation loop every design shares: say what is reused and why the rest is
    measured, then the baseline and each row (``name, key, compute``) through
    :func:`measured_row`. Returns the baseline, each row's data and every row's key
    (the baseline's as ``"baseline"``); ``say(number)`` picks the rows logged."""
    base_prov, base_compute = baseline
    todo = log_plan(rows_dir, [("baseline", base_prov), *((n, p) for n, p, _ in rows)], log)
    base = measured_row(rows_dir, "baseline", base_prov, base_compute, kind)
    measured: dict[str, R] = {}
    keys = {"baseline": base_prov.key}
    for number, (name, prov, compute) in enumerate(rows, start=1):
        if say(number):
            log(f"  [{number}/{len(rows)}] {name}" + ("" if name in todo else " (reused)"))
        measured[name] = measured_row(rows_dir, name, prov, compute, kind)
        keys[name] = prov.key
    return base, measured, keys


def control_seed(seed: int, trait: str) -> int:
    """Seed of a trait's random-direction control: stable, and different per trait."""
    return zlib.crc32(f"{trait.strip().upper()}|{seed}|random-direction".encode())


def random_vector_like(vector: Any, seed: int) -> Any:
    """A TraitVector with random unit directions and the same per-layer spread."""
    from traitlens.steer import TraitVector

    generator = torch.Generator().manual_seed(seed)
    directions = {
        layer: torch.randn(vector.d_model, generator=generator, dtype=torch.float64)
        for layer in vector.layers
    }
    spread = {layer: float(vector.spread[i]) for i, layer in enumerate(vector.layers)}
    return TraitVector.from_directions(
        vector.identity,
        directions,
        spread=spread,
        trait=vector.trait,
        method="random",
        source={"control_for": vector.method, "seed": seed},
    )


def matched_control(real: SelectedNeurons, random: SelectedNeurons) -> SelectedNeurons:
    """Random neurons (same count per layer) carrying the real set's δ values, so an
    NPTI boost of the control has the same magnitude as the real edit."""
    order_real = torch.argsort(real.layers, stable=True)
    order_random = torch.argsort(random.layers, stable=True)
    if not torch.equal(real.layers[order_real], random.layers[order_random]):
        raise ValueError("random control is not matched layer by layer")
    return SelectedNeurons(
        random.layers[order_random],
        random.indices[order_random],
        real.delta[order_real],
        random.a95[order_random],
    )


def flat_row(row: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts flattened to ``a.b`` columns (lists dropped), for CSV."""
    flat: dict[str, Any] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_row(value, name + "."))
        elif isinstance(value, list):
            continue
        else:
            flat[name] = value
    return flat
