"""Tests of hashjax/hashing/."""
