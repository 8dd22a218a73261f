"""The benchmark command's Markdown output (the benchmarks themselves run with `python -m benchmarks`)."""

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT))
from benchmarks import __main__ as bench  # noqa: E402


def test_markdown_table_replaces_only_its_region(tmp_path):
    bench.ROWS[:] = [
        {
            "benchmark": "post-process",
            "multibox": 5.0,
            "baseline": 100.0,
            "unit": "ms",
            "speedup": 20.0,
            "target": ">= 20x",
            "met": True,
        }
    ]
    path = tmp_path / "b.md"
    path.write_text("# Title\n\nintro\n")
    bench.write_markdown(str(path), bench.markdown_table("cpu", 12.0, "python -m benchmarks"))
    first = path.read_text()
    assert (
        first.startswith("# Title\n\nintro\n") and "| post-process | 5.0 | 100.0 | ms | 20.0x | >= 20x | yes |" in first
    )
    path.write_text(first + "\nnotes after the table\n")
    bench.ROWS[0].update(multibox=10.0, speedup=10.0, met=False)
    bench.write_markdown(str(path), bench.markdown_table("cpu", 12.0, "python -m benchmarks"))
    second = path.read_text()
    assert "| post-process | 10.0 | 100.0 | ms | 10.0x | >= 20x | **no** |" in second
    assert "20.0x" not in second and second.startswith("# Title") and second.endswith("notes after the table\n")
    assert second.count(bench.TABLE_BEGIN) == 1


def test_paired_timing_alternates_the_two_sides_and_takes_medians(monkeypatch):
    calls, clock = [], iter(range(1000))
    monkeypatch.setattr(bench.time, "perf_counter", lambda: float(next(clock)))

    def side(name, cost):
        def fn():
            calls.append(name)
            for _ in range(cost - 1):  # each call advances the fake clock by `cost` ticks in all
                next(clock)

        return fn

    t_ours, t_base = bench.timeit_pair(side("a", 1), side("b", 5), rounds=2, ours_per_round=3)
    assert calls == ["a", "b"] + ["a", "a", "a", "b"] * 2  # one warm-up each, then alternating rounds
    assert (t_ours, t_base) == (1.0, 5.0)
