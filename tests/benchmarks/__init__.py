"""Tests of benchmarks/ (the device check, the fault-injection run)."""
