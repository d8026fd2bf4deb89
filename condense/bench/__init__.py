"""Benchmark scripts that print measured figures (run them as ``python -m condense.bench.<name>``)."""
