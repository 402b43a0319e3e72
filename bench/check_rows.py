"""The rows a benchmark run left in a folder, counted, with every error row named.

    python -m bench.check_rows OUT        # exit status 1 when some row is an error row

A row is one JSON object per line of OUT/*.jsonl (bench/common.append_jsonl). An error row is one
whose "kind" ends in "error" (a benchmark row that raised, kept so that the others stand) or a step
row (bench/device_check.sh's steps.jsonl) whose command failed or ran past its limit. A line that is
not JSON counts as an error too: a row cut in the middle of its write.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path


def read_rows(folder: Path) -> dict[str, list[dict]]:
    """{file name: its rows}, a line that does not parse as a JSON object kept as {"kind": "error", ...}."""
    out = {}
    for path in sorted(folder.glob("*.jsonl")):
        rows = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                rows.append(parse_row(line, number))
        out[path.name] = rows
    return out


def parse_row(line: str, number: int) -> dict:
    """One line as a row; a line that is not a JSON object becomes an error row saying so."""
    try:
        row = json.loads(line)
    except ValueError as err:
        return {"kind": "error", "error": f"line {number} is not JSON ({err})"}
    return row if isinstance(row, dict) else {"kind": "error", "error": f"line {number} is not a JSON object"}


def is_error(row: dict) -> bool:
    return str(row.get("kind", "")).endswith("error")


def describe(row: dict) -> str:
    what = row.get("name") or row.get("backend") or row.get("step") or "?"
    return f"{what}: {row.get('error', 'failed')}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.check_rows", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="a folder of *.jsonl result files (a run's $OUT)")
    folder = p.parse_args(sys.argv[1:] if argv is None else argv).folder
    if not folder.is_dir():
        print(f"error: {folder} is not a folder", file=sys.stderr)
        return 2
    files = read_rows(folder)
    if not files:
        print(f"no rows: {folder} holds no *.jsonl file", file=sys.stderr)
        return 1
    errors = 0
    for name, rows in files.items():
        kinds = Counter(str(r.get("kind", "row")) for r in rows)
        print(f"{name}: {len(rows)} rows ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))})")
        for row in filter(is_error, rows):
            errors += 1
            print(f"  error row: {describe(row)}")
    print(f"{errors} error rows" if errors else "no error row")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
