"""Benchmarks and the tooling they share (tooling, not product: nothing in engine/, kernels/ or export/ imports it).

Each runs as `python -m bench.NAME` or `python bench/NAME.py` and writes its rows into
bench/results/ (or $BENCH_RESULTS) only with --save. `bench.aot` compiles the Triton kernels
for a GPU target without one (it patches Triton's launch and the environment while active).
"""
