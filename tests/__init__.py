"""hashjax's tests, one folder per subpackage (tests/retrieval/test_metrics.py tests
hashjax/retrieval/metrics.py); ROOT is the repository root."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
