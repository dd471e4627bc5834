"""Benchmarks: each `bench/<name>.py` measures one thing and writes `bench/results/<name>.md`."""
