"""Print what a test run cost, from the JUnit XML files pytest wrote (``--junitxml``).

    python scripts/test_durations.py .test-reports/fast.xml .test-reports/slow.xml

For each file: its tests, failures and wall time; then the slowest tests over all files
(setup of a shared fixture counts toward the first test that used it). ``make test``
prints this last, so the suite's cost is re-measured on every run, never remembered.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def main(paths: list[Path], top: int = 15) -> None:
    cases: list[tuple[float, str]] = []
    wall = 0.0
    for path in paths:
        if not path.is_file():
            print(f"{path}: not found (did that pytest run start?)")
            continue
        root = ET.parse(path).getroot()
        suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
        for suite in suites:
            seconds = float(suite.get("time", 0.0))
            wall += seconds
            failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            print(
                f"{path.name}: {suite.get('tests')} tests, {failed} failed, "
                f"{suite.get('skipped', 0)} skipped, {seconds / 60:.1f} min wall"
            )
            for case in suite.iter("testcase"):
                name = f"{case.get('classname', '')}::{case.get('name', '')}"
                cases.append((float(case.get("time", 0.0)), name))
    print(f"total pytest wall time {wall / 60:.1f} min over {len(cases)} tests")
    for seconds, name in sorted(cases, reverse=True)[:top]:
        print(f"  {seconds:7.1f} s  {name}")


if __name__ == "__main__":
    main([Path(a) for a in sys.argv[1:]] or [Path(".test-reports/fast.xml")])
