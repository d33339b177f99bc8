"""Print a sweep's calibration table: per trait and method, the band and strength chosen
within a perplexity budget, its effect and cost, its same-size control, and the persona
prompt beside it (no model needed).

    python scripts/sweep_summary.py RUN [--max-ppl-ratio 1.5] [--pole high]

These are the figures the README and the closing note quote.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:+.3f}"
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--max-ppl-ratio", type=float, default=1.5)
    parser.add_argument("--pole", default="high")
    args = parser.parse_args()

    from traitlens.report.sweep_report import comparison_rows
    from traitlens.sweep.run import current_rows

    rows = current_rows(args.run)
    ok = [r for r in rows if r.get("status") == "ok"]
    failed = len(rows) - len(ok)
    seconds = sum(r.get("seconds", 0.0) for r in rows)
    print(f"{len(ok)} cells ok, {failed} failed; {seconds / 60:.1f} worker-minutes of cells")
    for model in sorted({r["model"] for r in ok}):
        print(f"\n{model}, {args.pole} pole, within perplexity ×{args.max_ppl_ratio:g}:")
        header = (
            "trait",
            "method",
            "chosen",
            "readout Δ",
            "control Δ",
            "perplexity ×",
            "beats control",
            "prompt readout Δ",
        )
        print(" | ".join(header))
        for row in comparison_rows(ok, args.max_ppl_ratio, model, args.pole):
            print(" | ".join(_fmt(row.get(h, "")) for h in header))


if __name__ == "__main__":
    main()
