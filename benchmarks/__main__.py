"""python -m benchmarks [--quick] [--json FILE] [--only SECTION ...]"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import hot_path, instructions, scale, slow_db, writer
from benchmarks._common import FULL, QUICK

SECTIONS = {
    "hot_path": hot_path,
    "instructions": instructions,
    "writer": writer,
    "slow_db": slow_db,
    "scale": scale,
}

# (key, limit, True when the figure must stay at or below the limit)
TARGETS = (
    ("hot_path.light_ratio", 1.3, True),
    ("hot_path.full_ratio", 2.0, True),
    ("writer.sqlite.ratio", 0.8, False),
    ("writer.postgresql.ratio", 0.8, False),
    ("writer.mariadb.ratio", 0.8, False),
    ("slow_db.median_ratio", 1.1, True),
    ("slow_db.p99_ratio", 1.1, True),
    ("scale.cost_ratio_1m_10k", 1.1, True),
    ("scale.rss_growth_mb_1m", 50.0, True),
    ("scale.rss_growth_mb_db_down", 50.0, True),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts, under a minute")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--only", nargs="+", choices=sorted(SECTIONS), help="run these alone")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    sizes = QUICK if args.quick else FULL

    document: dict[str, Any] = {"machine": _machine(), "quick": args.quick}
    with tempfile.TemporaryDirectory(prefix="reec-bench-") as workdir:
        for name, section in SECTIONS.items():
            if args.only and name not in args.only:
                continue
            started = time.perf_counter()
            document[name] = section.run(sizes, Path(workdir))
            print(f"{name}: done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    _print(document)
    if args.json is not None:
        args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return 0


def _machine() -> dict[str, Any]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import os

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _lookup(document: dict[str, Any], dotted: str) -> Any:
    value: Any = document
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _print(document: dict[str, Any]) -> None:
    for key, value in _flatten(document):
        shown = f"{value:.3f}" if isinstance(value, float) else value
        print(f"{key:45} {shown}")
    print()
    for key, limit, at_most in TARGETS:
        value = _lookup(document, key)
        if not isinstance(value, int | float):
            continue
        met = value <= limit if at_most else value >= limit
        sign = "<=" if at_most else ">="
        print(f"{key:45} {value:8.3f}  target {sign} {limit:<5}  {'met' if met else 'NOT MET'}")


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        items = []
        for key, inner in value.items():
            items += _flatten(inner, f"{prefix}.{key}" if prefix else key)
        return items
    return [(prefix, value)]


if __name__ == "__main__":
    sys.exit(main())
