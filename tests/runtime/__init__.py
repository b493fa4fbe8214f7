"""Tests of hashjax/runtime/."""
