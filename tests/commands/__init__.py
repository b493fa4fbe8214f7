"""Tests of hashjax/commands/."""
