"""Tests of hashjax/ops/."""
