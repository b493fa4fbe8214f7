"""Tests of hashjax/retrieval/."""
