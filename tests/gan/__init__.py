"""Tests of hashjax/gan/."""
