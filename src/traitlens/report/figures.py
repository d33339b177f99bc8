"""Writing a figure: PNG (embedded in the HTML report) and SVG beside it (cheap, and
what a paper wants), both trimmed to the drawing.

Matplotlib's object API only (``Figure`` + ``savefig``): it needs no pyplot backend,
so importing a figure module never changes the caller's backend.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure


def save_figure(fig: Figure, stem: Path, dpi: int = 150) -> list[Path]:
    """Write ``stem.png`` (at ``dpi``) and ``stem.svg``, creating the folder; returns
    both paths, PNG first."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    fig.savefig(paths[0], dpi=dpi, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    return paths
