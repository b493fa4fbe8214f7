"""Tests of hashjax/serve/."""
