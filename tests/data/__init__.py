"""Tests of hashjax/data/."""
