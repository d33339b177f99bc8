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
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from traitlens.artifact_io import atomic_path
from traitlens.data.schema import (
    TRAIT_NAMES,
    TRAITS,
    AnswerRecord,
    ConceptItem,
    ContrastivePrompt,
    ForcedChoice,
    MCItem,
    Persona,
    Question,
    Statement,
    TraitInfo,
    parse_traits,
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
    "load_items",
    "check_item_bank",
    "load_forced_choices",
    "load_mc_items",
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
            fix = 'fix the line so it is one complete JSON object, e.g. {"id": "x1", "text": "..."}'
            raise _malformed_json(display, lineno, exc, fix) from None
        fix = "put exactly one {...} object on each line"
        rows.append((lineno, _json_object(obj, display, lineno, fix)))
    return rows


def _malformed_json(display: str, line: int, exc: json.JSONDecodeError, fix: str) -> DataError:
    return DataError(
        f"{display} line {line}: malformed JSON ({exc.msg} at column {exc.colno}) — {fix}"
    )


def _json_object(obj: Any, display: str, line: int, fix: str) -> dict[str, Any]:
    """``obj`` if it is a JSON object (one record), else the error naming its line."""
    if not isinstance(obj, dict):
        raise DataError(
            f"{display} line {line}: expected a JSON object, got {type(obj).__name__} — {fix}"
        )
    return obj


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _parse_json(text: str, display: str) -> list[tuple[int, dict[str, Any]]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        fix = "fix the syntax; the file must be one JSON list of objects"
        raise _malformed_json(display, exc.lineno, exc, fix) from None
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
        fix = "make every element of the list a {...} object"
        rows.append((line, _json_object(obj, display, line, fix)))
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
    columns: Mapping[str, str] | None = None,
) -> str:
    """Turn a pydantic error into lines naming file, line, field and fix.

    ``columns`` maps a model field to the user's column name when the loader renamed
    columns (``label_ocean`` -> ``trait``), so the message names the column the user sees.
    """
    problems: list[str] = []
    for err in exc.errors():
        loc = err.get("loc", ())
        field = str(loc[0]) if loc else ""
        if columns:
            field = columns.get(field, field)
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


def _read_rows(
    source: Path | Traversable, display: str
) -> tuple[list[tuple[int, dict[str, Any]]], str, str, str]:
    """Parse a data file into ``(line, raw record)`` rows, by extension.

    Returns:
        ``(rows, kind, suffix, text)``: ``kind`` is ``"column"`` for CSV and ``"key"``
        for JSON (the word messages use for a field), ``text`` the decoded file.
    """
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
        return _parse_jsonl(text, display), "key", suffix, text
    if suffix == ".json":
        return ([] if not text.strip() else _parse_json(text, display)), "key", suffix, text
    return _parse_csv(text, display), "column", suffix, text


def _empty_error(display: str, suffix: str, text: str, fields: str, header: str) -> DataError:
    example = f" (CSV header line 1: {header})" if suffix == ".csv" else ""
    where = (
        "no rows after the header on line 1"
        if suffix == ".csv" and text.strip()
        else "no record found from line 1 on"
    )
    return DataError(
        f"{display} is empty ({where}) — it needs at least one record with fields {fields}{example}"
    )


def _validate_rows(
    rows: list[tuple[int, dict[str, Any]]],
    display: str,
    model: type[M],
    kind: str,
    *,
    id_field: str | None = "id",
    columns: Mapping[str, str] | None = None,
) -> list[M]:
    records: list[M] = []
    first_seen: dict[str, int] = {}
    shown_id = (columns or {}).get(id_field or "", id_field)
    for line, raw in rows:
        try:
            record = model.model_validate(raw)
        except ValidationError as exc:
            raise DataError(_explain(exc, display, line, model, kind, raw, columns)) from None
        key = str(getattr(record, id_field)) if id_field else ""
        if key and key in first_seen:
            raise DataError(
                f"{display} line {line}: duplicate {shown_id} '{key}' (already used on line "
                f"{first_seen[key]}) — give every record a unique {shown_id}"
            )
        first_seen[key] = line
        records.append(record)
    return records


def _load_records(
    source: Path | Traversable, display: str, model: type[M], *, id_field: str | None = "id"
) -> list[M]:
    rows, kind, suffix, text = _read_rows(source, display)
    if not rows:
        header = ",".join(n for n, f in model.model_fields.items() if f.is_required())
        raise _empty_error(display, suffix, text, _fields_hint(model), header)
    return _validate_rows(rows, display, model, kind, id_field=id_field)


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


# Column names public item sets use for each ConceptItem field (matched ignoring case), so
# an IPIP-style CSV (text,label_raw,label_ocean,key) loads with no hand editing.
_ITEM_COLUMNS: dict[str, tuple[str, ...]] = {
    "text": ("text", "item", "statement", "question"),
    "trait": ("trait", "domain", "label_ocean", "factor", "big5"),
    "keyed": ("keyed", "key", "sign", "keying"),
    "facet": ("facet", "label_raw", "subscale"),
    "id": ("id", "item_id", "code"),
}
_ITEM_REQUIRED: tuple[str, ...] = ("text", "trait", "keyed")
_ITEM_ROLE: dict[str, str] = {
    "text": "item text",
    "trait": "Big Five domain",
    "keyed": "keying",
    "facet": "facet",
    "id": "item id",
}
_ITEM_VALUES: dict[str, str] = {
    "text": "the item itself",
    "trait": "O/C/E/A/N or the full names",
    "keyed": "+/-, 1/-1, plus/minus",
}


def _item_columns(headers: list[str], display: str) -> dict[str, str]:
    """Decide, once per file, which column holds each field: ``{field: column}``."""
    columns: dict[str, str] = {}
    missing: list[str] = []
    for field, names in _ITEM_COLUMNS.items():
        found = [h for h in headers if h.strip().lower() in names]
        if len(found) > 1:
            raise DataError(
                f"{display}: columns {' and '.join(map(repr, found))} "
                f"{'both' if len(found) == 2 else 'all'} look like the {_ITEM_ROLE[field]} — "
                f"keep one of them and rename the others to a name not in: {', '.join(names)}"
            )
        if found:
            columns[field] = found[0]
        elif field in _ITEM_REQUIRED:
            missing.append(field)
    if missing:
        needed = "; ".join(
            f"the {_ITEM_ROLE[field]} ({_ITEM_VALUES[field]}) as one of "
            f"{', '.join(_ITEM_COLUMNS[field])}"
            for field in missing
        )
        raise DataError(
            f"{display}: no {' or '.join(_ITEM_ROLE[field] for field in missing)} column "
            f"among the columns found ({', '.join(headers) or 'none'}) — name the column "
            f"holding {needed} (names match ignoring case)"
        )
    return columns


def _rename_item_rows(
    rows: list[tuple[int, dict[str, Any]]], columns: Mapping[str, str], display: str, kind: str
) -> list[tuple[int, dict[str, Any]]]:
    """Rows keyed by ConceptItem field; a file without an id or facet column gets
    placeholders (``line-N``) that :func:`load_items` replaces once domains are known."""
    renamed: list[tuple[int, dict[str, Any]]] = []
    for line, raw in rows:
        record: dict[str, Any] = {}
        for field, column in columns.items():
            value = raw.get(column)
            if value is None or (isinstance(value, str) and not value.strip()):
                raise DataError(
                    f"{display} line {line}: {kind} '{column}' is missing or empty — fill in "
                    f"the {_ITEM_ROLE[field]} (every item in this file needs "
                    f"{', '.join(columns.values())})"
                )
            record[field] = value
        record.setdefault("id", f"line-{line}")
        record.setdefault("facet", record["id"])
        renamed.append((line, record))
    return renamed


def load_items(path: PathLike | None = None) -> list[ConceptItem]:
    """Load a concept item bank: questionnaire items labelled with domain, facet and key.

    ``path=None`` loads the shipped bank (360 items written for traitlens: 5 domains x
    the six :data:`FACETS` each x 12 items, half keyed ``+``). A user file (.jsonl, .json,
    .csv) may use the column names public item sets are distributed with, matched
    ignoring case, so e.g. an IPIP-style CSV ``text,label_raw,label_ocean,key`` loads
    as it is:

    =====  ==============================================  ===========================
    field  accepted column names                           values
    =====  ==============================================  ===========================
    text   text, item, statement, question                 the item; required
    trait  trait, domain, label_ocean, factor, big5        O/C/E/A/N or the full names
                                                           in any case; required
    keyed  keyed, key, sign, keying                        +/-, 1/-1, +1, plus/minus,
                                                           positive/negative; required
    facet  facet, label_raw, subscale                      any label, snake-cased
    id     id, item_id, code                               unique
    =====  ==============================================  ===========================

    Without a facet column every item is its own facet (``facet`` = its id, snake-cased),
    so facet-grouped cross-validation falls back to holding out single items. Without an
    id column ids are generated in file order as ``{trait}-{n:03d}``, numbered per
    domain (``E-001``, ``E-002``, ``N-001``...), so the same file always gets the same ids.
    Other columns are ignored. "Emotional Stability" and "Intellect" are refused as domain
    values: relabel them N (flipping every key) or O yourself, since the flip is a choice.

    Raises:
        DataError: the file is empty; a required column is missing or two columns claim
            the same field; a value is bad (with its line); ids or texts (ignoring case
            and spacing) repeat (with both lines).
    """
    source, display = _resolve(path, "concept_items.jsonl")
    rows, kind, suffix, text = _read_rows(source, display)
    if not rows:
        raise _empty_error(
            display, suffix, text, "text, trait, keyed (optional: facet, id)", "text,trait,keyed"
        )
    if suffix == ".csv":
        # The header, not the rows: a column whose cells are all empty is still a column.
        header = next(csv.reader(io.StringIO(text, newline="")))
        headers = [cell.strip().lower() for cell in header]
    else:
        headers = list(dict.fromkeys(key for _, raw in rows for key in raw))
    columns = _item_columns(headers, display)
    renamed = _rename_item_rows(rows, columns, display, kind)
    items = _validate_rows(
        renamed,
        display,
        ConceptItem,
        kind,
        id_field="id" if "id" in columns else None,
        columns=columns,
    )
    if "id" not in columns:
        numbers: Counter[str] = Counter()
        generated = []
        for item in items:
            numbers[item.trait] += 1
            new_id = f"{item.trait}-{numbers[item.trait]:03d}"
            facet = item.facet if "facet" in columns else new_id
            generated.append(
                ConceptItem.model_validate({**item.model_dump(), "id": new_id, "facet": facet})
            )
        items = generated
    first_line: dict[str, int] = {}
    for (line, _), item in zip(renamed, items, strict=True):
        key = " ".join(item.text.casefold().split())
        if key in first_line:
            raise DataError(
                f"{display} line {line}: duplicate text {item.text!r} (same as line "
                f"{first_line[key]}, ignoring case and spacing) — delete one of the two "
                "lines or reword it"
            )
        first_line[key] = line
    return items


def check_item_bank(
    items: Sequence[ConceptItem],
    traits: str | Sequence[str] | None = TRAITS,
    *,
    min_facets: int = 2,
    min_items: int = 4,
    source: str = "item bank",
) -> None:
    """Refuse an item bank too thin for the concept design, before any model runs.

    Each requested domain needs items (a probe cannot learn an absent class), at least
    ``min_items`` of them (to fit and still hold some out), and at least ``min_facets``
    distinct facets: facet-grouped cross-validation holds out whole facets, so with one
    facet there is nothing to train on. ``source`` names the bank in messages.

    Raises:
        DataError: one line per problem found, each naming the domain and the fix.
    """
    problems: list[str] = []
    for code in parse_traits(traits):
        domain = [item for item in items if item.trait == code]
        name = f"{code} ({TRAIT_NAMES[code]})"
        if not domain:
            problems.append(
                f"{source} has no items for {name}; add some or drop {code} from --traits"
            )
            continue
        if len(domain) < min_items:
            problems.append(
                f"{source} has only {len(domain)} item(s) for {name}, fewer than the "
                f"{min_items} needed to fit on some and hold out others; add items or drop "
                f"{code} from --traits"
            )
        facets = sorted({item.facet for item in domain})
        if len(facets) < min_facets:
            problems.append(
                f"{source} has {len(facets)} distinct facet(s) for {name} "
                f"({', '.join(facets)}), fewer than {min_facets}: facet-grouped "
                f"cross-validation holds out whole facets, so it needs at least {min_facets}; "
                "label the items with more facets (a bank without a facet column gets one "
                "facet per item)"
            )
    if problems:
        raise DataError("\n".join(problems))


def load_forced_choices(path: PathLike | None = None) -> list[ForcedChoice]:
    """Load forced-choice items (fields id, trait, situation, high_option, low_option)."""
    source, display = _resolve(path, "forced_choice.jsonl")
    return _load_records(source, display, ForcedChoice)


def load_mc_items(path: PathLike | None = None) -> list[MCItem]:
    """Load multiple-choice capability items (fields id, topic, question, choices, answer).

    The default is the project's own 200-item set (8 topics × 25). In a CSV file
    ``choices`` is a JSON list, e.g. ``"[""3"", ""4"", ""5""]"``.
    """
    source, display = _resolve(path, "capability_mc.jsonl")
    return _load_records(source, display, MCItem)


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
    with atomic_path(target) as tmp, tmp.open("w", encoding="utf-8", newline="\n") as fh:
        for record in records:
            data = record.model_dump(mode="json") if isinstance(record, BaseModel) else record
            fh.write(json.dumps(dict(data), ensure_ascii=False) + "\n")
    return target


def save_prompts(prompts: Iterable[ContrastivePrompt], path: PathLike) -> Path:
    """Write a labelled prompt set as JSONL (conventionally ``prompts.jsonl``)."""
    return save_jsonl(prompts, path)
