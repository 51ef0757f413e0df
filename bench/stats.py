"""Small statistics for the benchmarks' reports."""

from __future__ import annotations


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary(values: list[float]) -> str:
    return f"p50 {percentile(values, 50) * 1000:7.1f} ms   p99 {percentile(values, 99) * 1000:7.1f} ms"
