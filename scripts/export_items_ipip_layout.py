"""Write the shipped item bank in the column layout public IPIP item sets use.

``examples/items_ipip_layout.csv`` (columns ``text,label_raw,label_ocean,key``; domains
as full names, keys as 1/-1, facets in title case, no id column) is what the README's
``--items`` example and the CLI test load: a file laid out like a downloaded inventory
must work with no hand editing. The text is traitlens' own.

    python scripts/export_items_ipip_layout.py [OUT.csv]
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from traitlens.data import TRAIT_NAMES, load_items


def main(out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label_raw", "label_ocean", "key"])
        for item in load_items():
            writer.writerow(
                [
                    item.text,
                    item.facet.replace("_", " ").title(),
                    TRAIT_NAMES[item.trait].capitalize(),
                    "1" if item.keyed == "+" else "-1",
                ]
            )
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("examples/items_ipip_layout.csv"))
