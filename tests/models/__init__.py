"""Tests of hashjax/models/."""
