"""Tests of hashjax/experiments/."""
