"""The compile-cost section of the speed report: the measurement's bookkeeping and its table.
(A real cold compile takes minutes; the report's numbers come from `hvadam-bench speed`.)"""

from __future__ import annotations

import pytest
import torch

from hvadam_bench.studies import speed_compile_cost as compile_cost


def test_measure_here_times_cold_and_warm_calls(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn: fn)  # eager: the bookkeeping only
    result = compile_cost.measure_here("HVAdam")
    assert result["cold_s"] > 0 and result["warm_ms"] > 0


def test_a_failed_measurement_is_one_line():
    with pytest.raises(RuntimeError, match=r"^compiling a step with nonexistent failed: KeyError"):
        compile_cost.measure("nonexistent")


def test_ratios_and_table():
    results = compile_cost.with_ratios(
        {"Adam": {"cold_s": 40.0, "warm_ms": 1.0}, "HVAdam": {"cold_s": 50.0, "warm_ms": 1.5}}
    )
    table = compile_cost.render(results)
    assert "| HVAdam | 50 | 1.25x | 1.50 | 1.50x |" in table
    assert "| Adam | 40 | 1.00x | 1.00 | 1.00x |" in table
