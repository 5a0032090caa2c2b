"""The benchmark still runs and reports every figure; how fast is not asserted here."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

REQUIRED_KEYS = (
    "hot_path.bare_span_us",
    "hot_path.light_success_us",
    "hot_path.full_success_us",
    "hot_path.light_failure_us",
    "hot_path.seed_pattern_us",
    "hot_path.light_ratio",
    "hot_path.full_ratio",
    *(
        f"writer.{backend}.{figure}"
        for backend in ("sqlite", "postgresql", "mariadb")
        for figure in ("rows_per_s", "raw_rows_per_s", "ratio")
    ),
    "slow_db.p99_ratio",
    "scale.rss_growth_mb_1m",
    "scale.us_per_job_10k",
    "scale.us_per_job_1m",
    "scale.rss_growth_mb_db_down",
)
# Memory may stay where it was; every other figure is a time, a rate or a ratio.
MAY_BE_ZERO = ("scale.rss_growth_mb_1m", "scale.rss_growth_mb_db_down")


def _figure(document: dict[str, Any], dotted: str) -> tuple[Any, str | None]:
    """The value under a dotted key, or the reason a part of it was skipped."""
    value: Any = document
    for part in dotted.split("."):
        assert isinstance(value, dict), f"{dotted}: {value!r} is not a section"
        if "skipped" in value:
            return None, value["skipped"]
        assert part in value, f"{dotted} is missing"
        value = value[part]
    return value, None


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    output = tmp_path_factory.mktemp("bench") / "figures.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(output.read_text(encoding="utf-8"))
    return document


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_the_quick_benchmark_reports_every_figure_as_a_number_or_a_skip_reason(
    quick_run: dict[str, Any], key: str
) -> None:
    value, skipped = _figure(quick_run, key)
    if skipped is not None:
        assert isinstance(skipped, str) and skipped.strip(), f"{key}: skipped without a reason"
        assert os.environ.get("REEC_TEST_REQUIRE_SERVERS") != "1", f"{key} skipped: {skipped}"
        return
    assert isinstance(value, int | float) and not isinstance(value, bool), f"{key}: {value!r}"
    assert math.isfinite(value), f"{key}: {value!r}"
    assert value >= 0 if key in MAY_BE_ZERO else value > 0, f"{key}: {value!r}"


def test_the_quick_benchmark_says_it_ran_with_small_counts(quick_run: dict[str, Any]) -> None:
    assert quick_run["quick"] is True
    assert quick_run["scale"]["points"]["1m"]["jobs"] < 1_000_000


def test_the_quick_benchmark_skips_the_instruction_count_and_says_why(
    quick_run: dict[str, Any],
) -> None:
    reason = quick_run["instructions"]["skipped"]
    assert "--quick" in reason


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_instructions_are_counted_on_the_job_s_thread_and_grow_with_the_jobs(
    tmp_path: Path,
) -> None:
    from benchmarks import instructions

    few = instructions._count("light_success", 20, tmp_path)
    many = instructions._count("light_success", 220, tmp_path)
    # Two hundred more runs of a job cost more than a thousand instructions each.
    assert many - few > 200 * 1_000


def test_a_scale_point_of_several_runs_is_the_median_run_with_the_largest_growth() -> None:
    from benchmarks.scale import _summary

    runs = [
        {"us_per_job": 3.0, "rss_growth_mb": 1.0, "jobs": 10},
        {"us_per_job": 1.0, "rss_growth_mb": 5.0, "jobs": 10},
        {"us_per_job": 2.0, "rss_growth_mb": 2.0, "jobs": 10},
    ]
    point = _summary(runs)
    assert point["us_per_job"] == 2.0
    assert point["rss_growth_mb"] == 5.0
    assert point["runs"] == 3
    assert point["us_per_job_of_each_run"] == [3.0, 1.0, 2.0]
