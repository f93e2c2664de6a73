#!/usr/bin/env python3
"""Splits tests/integration into shards that tests/run-all.sh runs side by
side, each in its own network namespace (tests/netns-run.sh), so the
integration step takes about as long as its longest shard instead of the
sum of all files.

  shard.py plan N DIR      N lines of test files (longest first, greedy by
                           recorded duration), then one line "alone: ..."
                           with the files that must run by themselves
  shard.py record DIR JUNIT...  rewrite DIR/durations.json from junit
                               reports

A file whose text carries `pytest.mark.alone` (a load figure, a flood, an
RSS measure: results that another shard's CPU would skew) goes to the
"alone" line, run after the shards. A file with no recorded duration
weighs as much as the median file, so a new file needs no bookkeeping; run
`record` after a full run to refresh the weights.

Only the standard library: it runs before the test venv exists.
"""

from __future__ import annotations

import json
import statistics
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

DURATIONS = "durations.json"


def plan(n: int, directory: Path) -> list[str]:
    files = sorted(p.name for p in directory.glob("test_*.py"))
    weights_path = directory / DURATIONS
    weights = json.loads(weights_path.read_text()) if weights_path.exists() else {}
    default = statistics.median(weights.values()) if weights else 30.0
    alone = [f for f in files if "pytest.mark.alone" in (directory / f).read_text()]
    rest = [f for f in files if f not in alone]
    # Longest processing time first: each file to the lightest shard so far.
    rest.sort(key=lambda f: (-weights.get(f, default), f))
    shards: list[tuple[float, list[str]]] = [(0.0, []) for _ in range(max(n, 1))]
    for f in rest:
        i = min(range(len(shards)), key=lambda k: shards[k][0])
        total, members = shards[i]
        shards[i] = (total + weights.get(f, default), members + [f])
    lines = [" ".join(str(directory / f) for f in members) for _, members in shards if members]
    lines.append("alone: " + " ".join(str(directory / f) for f in alone))
    return lines


def record(directory: Path, reports: list[Path]) -> dict[str, float]:
    """Seconds per test file, from the testcases' classname
    (tests.integration.test_x or test_x) and time."""
    out: dict[str, float] = {}
    for report in reports:
        for case in ET.parse(report).getroot().iter("testcase"):
            module = case.get("classname", "").split(".")[-1]
            if module.startswith("test_"):
                name = f"{module}.py"
                out[name] = round(out.get(name, 0.0) + float(case.get("time", 0)), 1)
    old = directory / DURATIONS
    merged = json.loads(old.read_text()) if old.exists() else {}
    merged.update(out)
    merged = {k: v for k, v in sorted(merged.items()) if (directory / k).exists()}
    old.write_text(json.dumps(merged, indent=1) + "\n")
    return merged


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "plan":
        print("\n".join(plan(int(argv[1]), Path(argv[2]))))
        return 0
    if len(argv) >= 3 and argv[0] == "record":
        merged = record(Path(argv[1]), [Path(a) for a in argv[2:]])
        print(f"{len(merged)} files, {sum(merged.values()):.0f} s in all")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
