"""Load and save the data files, turning every problem into a DataError a user can act on.

Users bring their own personas, questions and questionnaires as JSONL, JSON or CSV, often
edited by hand or in a spreadsheet. A typo there should never surface as a pydantic
traceback or, worse, as a silently mislabelled experiment, so every failure names the
file, the 1-based line (for CSV the header is line 1), the field, and what to change.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Iterable, Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from traitlens.data.schema import (
    TRAITS,
    AnswerRecord,
    ContrastivePrompt,
    ForcedChoice,
    Persona,
    Question,
    Statement,
    TraitInfo,
)
from traitlens.errors import DataError

if sys.version_info >= (3, 11):
    from importlib.resources.abc import Traversable
else:  # pragma: no cover - Python 3.10
    from importlib.abc import Traversable

__all__ = [
    "SUPPORTED_SUFFIXES",
    "shipped_file",
    "load_traits",
    "load_personas",
    "load_questions",
    "load_statements",
    "load_forced_choices",
    "load_answers",
    "load_prompts",
    "save_jsonl",
    "save_prompts",
]

SUPPORTED_SUFFIXES: tuple[str, ...] = (".jsonl", ".json", ".csv")
"""File types every loader accepts (chosen by extension)."""

PathLike = str | os.PathLike[str]
M = TypeVar("M", bound=BaseModel)


def shipped_file(name: str) -> Traversable:
    """Return the packaged data file ``name`` (e.g. ``"personas.jsonl"``).

    Goes through importlib.resources so it works from a wheel or a zip, not only a checkout.
    """
    return files("traitlens.data") / "files" / name


# ---------------------------------------------------------------------------- parsing


def _fields_hint(model: type[BaseModel]) -> str:
    required = [n for n, f in model.model_fields.items() if f.is_required()]
    optional = [n for n, f in model.model_fields.items() if not f.is_required()]
    text = ", ".join(required)
    if optional:
        text += f" (optional: {', '.join(optional)})"
    return text


def _read_text(source: Path | Traversable, display: str) -> str:
    try:
        data = source.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{display}: file not found — check the path and spelling") from None
    except IsADirectoryError:
        raise DataError(f"{display}: is a directory — pass the path of a data file") from None
    except OSError as exc:
        raise DataError(f"{display}: cannot be read ({exc}) — check its permissions") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or (len(data) > 1 and b"\x00" in data[:2]):
        raise DataError(
            f"{display}: the file is UTF-16 encoded — re-save it as UTF-8 (in a spreadsheet: "
            "'CSV UTF-8'; in an editor: encoding UTF-8)"
        )
    try:
        return data.decode("utf-8-sig")  # -sig: tolerate the BOM spreadsheet apps add
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{display} line {line}: not valid UTF-8 text — re-save the file as UTF-8"
        ) from None


def _parse_jsonl(text: str, display: str) -> list[tuple[int, dict[str, Any]]]:
    rows: list[tuple[int, dict[str, Any]]] = []
    # split("\n"), not splitlines(): U+2028 may legally appear inside a JSON string.
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{display} line {lineno}: malformed JSON ({exc.msg} at column {exc.colno}) — "
                'fix the line so it is one complete JSON object, e.g. {"id": "x1", "text": "..."}'
            ) from None
        if not isinstance(obj, dict):
            raise DataError(
                f"{display} line {lineno}: expected a JSON object, got {type(obj).__name__} — "
                "put exactly one {...} object on each line"
            )
        rows.append((lineno, obj))
    return rows


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _parse_json(text: str, display: str) -> list[tuple[int, dict[str, Any]]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{display} line {exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno}) — "
            "fix the syntax; the file must be one JSON list of objects"
        ) from None
    if not isinstance(data, list):
        raise DataError(
            f"{display} line 1: expected a JSON list of objects, got {type(data).__name__} — "
            'wrap the records in [...], e.g. [{"id": "x1", ...}, ...]'
        )
    # json gives no positions, so walk the top-level array to find where each element starts.
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0) + 1  # just past "["
    line, counted_to = 1, 0
    rows: list[tuple[int, dict[str, Any]]] = []
    for obj in data:
        pos = _skip_ws(text, pos)
        line += text.count("\n", counted_to, pos)
        counted_to = pos
        _, pos = decoder.raw_decode(text, pos)
        pos = _skip_ws(text, pos) + 1  # past "," (or the closing "]")
        if not isinstance(obj, dict):
            raise DataError(
                f"{display} line {line}: expected a JSON object, got {type(obj).__name__} — "
                "make every element of the list a {...} object"
            )
        rows.append((line, obj))
    return rows


def _parse_csv(text: str, display: str) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None or not any(cell.strip() for cell in header):
            return []
        names = [cell.strip().lower() for cell in header]
        for separator, name in ((";", "semicolons"), ("\t", "tabs")):
            if any(separator in cell for cell in header):
                raise DataError(
                    f"{display} line 1: the header {','.join(header)!r} looks separated by "
                    f"{name} — use commas as the delimiter (in a spreadsheet, export as "
                    "'CSV (comma delimited)')"
                )
        if "" in names:
            col = names.index("") + 1
            raise DataError(
                f"{display} line 1: column {col} of the header has no name — "
                "give every column a name or delete the empty column"
            )
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise DataError(
                f"{display} line 1: header repeats column {dupes[0]!r} — "
                "keep only one column with each name"
            )
        rows: list[tuple[int, dict[str, Any]]] = []
        previous_end = reader.line_num
        for cells in reader:
            start = previous_end + 1  # a quoted cell may span lines; report where it began
            previous_end = reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) > len(names):
                raise DataError(
                    f"{display} line {start}: {len(cells)} cells but the header has "
                    f"{len(names)} columns — quote cells that contain commas, "
                    'e.g. "You are calm, kind and patient."'
                )
            # Empty cells count as absent so optional fields fall back to their defaults
            # and required ones are reported as missing rather than as empty strings.
            record = {n: c.strip() for n, c in zip(names, cells, strict=False) if c.strip()}
            rows.append((start, record))
    except csv.Error as exc:
        raise DataError(
            f"{display} line {reader.line_num}: malformed CSV ({exc}) — "
            "check the quoting on that line"
        ) from None
    return rows


def _explain(
    exc: ValidationError,
    display: str,
    line: int,
    model: type[BaseModel],
    kind: str,
    raw: Mapping[str, Any],
) -> str:
    problems: list[str] = []
    for err in exc.errors():
        loc = err.get("loc", ())
        field = str(loc[0]) if loc else ""
        where = f"{display} line {line}"
        if err["type"] == "missing":
            fix = (
                f"fill in its cell or add a '{field}' column"
                if kind == "column"
                else f"add a '{field}' key"
            )
            extra = sorted(set(raw) - set(model.model_fields))
            seen = f"; unrecognized field(s) {', '.join(map(repr, extra))}" if extra else ""
            problems.append(
                f"{where}: missing field '{field}' — {fix} "
                f"(every record needs: {_fields_hint(model)}{seen})"
            )
            continue
        msg = str(err.get("msg", "invalid value"))
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        else:
            msg = f"{msg} (got {err.get('input')!r}) — fix the value"
        problems.append(f"{where}: field '{field}': {msg}" if field else f"{where}: {msg}")
    return "\n".join(problems)


def _load_records(
    source: Path | Traversable, display: str, model: type[M], *, id_field: str | None = "id"
) -> list[M]:
    suffix = Path(source.name).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        shown = suffix or "(no extension)"
        raise DataError(
            f"{display}: unsupported file type {shown!r} — use a .jsonl, .json or .csv file "
            "(rename it if the content already has that format)"
        )
    if isinstance(source, Path) and not source.exists():
        raise DataError(f"{display}: file not found — check the path and spelling")
    text = _read_text(source, display)
    if suffix == ".jsonl":
        rows, kind = _parse_jsonl(text, display), "key"
    elif suffix == ".json":
        if not text.strip():
            rows = []
        else:
            rows = _parse_json(text, display)
        kind = "key"
    else:
        rows, kind = _parse_csv(text, display), "column"
    if not rows:
        hint = _fields_hint(model)
        header = ",".join(n for n, f in model.model_fields.items() if f.is_required())
        example = f" (CSV header line 1: {header})" if suffix == ".csv" else ""
        where = (
            "no rows after the header on line 1"
            if suffix == ".csv" and text.strip()
            else "no record found from line 1 on"
        )
        raise DataError(
            f"{display} is empty ({where}) — it needs at least one "
            f"record with fields {hint}{example}"
        )
    records: list[M] = []
    first_seen: dict[str, int] = {}
    for line, raw in rows:
        try:
            record = model.model_validate(raw)
        except ValidationError as exc:
            raise DataError(_explain(exc, display, line, model, kind, raw)) from None
        key = str(getattr(record, id_field)) if id_field else ""
        if key and key in first_seen:
            raise DataError(
                f"{display} line {line}: duplicate {id_field} '{key}' (already used on line "
                f"{first_seen[key]}) — give every record a unique {id_field}"
            )
        first_seen[key] = line
        records.append(record)
    return records


def _resolve(path: PathLike | None, shipped_name: str) -> tuple[Path | Traversable, str]:
    if path is None:
        source = shipped_file(shipped_name)
        return source, f"{source} (shipped with traitlens)"
    p = Path(path).expanduser()
    return p, str(path)


# ---------------------------------------------------------------------------- public API


def load_traits(path: PathLike | None = None) -> list[TraitInfo]:
    """Load trait definitions (labels, facets, pole descriptions), in O, C, E, A, N order.

    The shipped file must describe all five traits; a user file may cover a subset.
    """
    source, display = _resolve(path, "traits.jsonl")
    infos = _load_records(source, display, TraitInfo, id_field="code")
    if path is None:
        missing = [code for code in TRAITS if code not in {i.code for i in infos}]
        if missing:
            raise DataError(
                f"{display}: no record for trait(s) {', '.join(missing)} — "
                "reinstall traitlens; the shipped data is incomplete"
            )
    order = {code: i for i, code in enumerate(TRAITS)}
    return sorted(infos, key=lambda info: order[info.code])


def load_personas(path: PathLike | None = None) -> list[Persona]:
    """Load persona system prompts (fields id, trait, pole, intensity, text).

    ``path=None`` loads the shipped set: at least 12 personas per pole per trait.
    """
    source, display = _resolve(path, "personas.jsonl")
    return _load_records(source, display, Persona)


def load_questions(path: PathLike | None = None) -> list[Question]:
    """Load situational questions (fields id, text, optional category; default neutral)."""
    source, display = _resolve(path, "questions.jsonl")
    return _load_records(source, display, Question)


def load_answers(path: PathLike) -> list[AnswerRecord]:
    """Load open-ended answers to score (fields answer, optional question and id);
    ids, when given, must be unique."""
    source, display = _resolve(path, "")
    return _load_records(source, display, AnswerRecord, id_field="id")


def load_statements(path: PathLike | None = None) -> list[Statement]:
    """Load first-person questionnaire statements (fields id, trait, text, keyed)."""
    source, display = _resolve(path, "statements.jsonl")
    return _load_records(source, display, Statement)


def load_forced_choices(path: PathLike | None = None) -> list[ForcedChoice]:
    """Load forced-choice items (fields id, trait, situation, high_option, low_option)."""
    source, display = _resolve(path, "forced_choice.jsonl")
    return _load_records(source, display, ForcedChoice)


def load_prompts(path: PathLike) -> list[ContrastivePrompt]:
    """Load a labelled prompt set written by :func:`save_prompts` (or hand-made)."""
    return _load_records(Path(path).expanduser(), str(path), ContrastivePrompt)


def save_jsonl(records: Iterable[BaseModel | Mapping[str, Any]], path: PathLike) -> Path:
    """Write records one JSON object per line (UTF-8, non-ASCII kept readable).

    The file is written to a temporary sibling and renamed, so an interrupted run never
    leaves a half-written file that later loads as a shorter data set.

    Returns:
        The path written.
    """
    target = Path(path).expanduser()
    if target.suffix.lower() in (".json", ".csv"):
        raise DataError(
            f"{path}: save_jsonl writes JSON Lines, not {target.suffix} — "
            "use a path ending in .jsonl"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="\n") as fh:
        for record in records:
            data = record.model_dump(mode="json") if isinstance(record, BaseModel) else record
            fh.write(json.dumps(dict(data), ensure_ascii=False) + "\n")
    tmp.replace(target)
    return target


def save_prompts(prompts: Iterable[ContrastivePrompt], path: PathLike) -> Path:
    """Write a labelled prompt set as JSONL (conventionally ``prompts.jsonl``)."""
    return save_jsonl(prompts, path)
