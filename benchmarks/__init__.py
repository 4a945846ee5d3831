"""TaskForge's benchmark harness: `python -m benchmarks` (see docs/benchmarks.md)."""
