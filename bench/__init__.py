"""Benchmarks: ``python -m bench`` runs every ``bench/bench_*.py`` module's ``run() -> dict``.

Benchmarks print figures and never assert timings; the figures go to ``bench/results.json``
(not committed). Shared helpers are in :mod:`bench.common`.
"""
