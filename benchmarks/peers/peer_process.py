"""Process set-up shared by the peer scripts (run in .venv-peers), done before torch is imported."""

import os
import sys


def json_channel_on_one_thread():
    """Keep a private copy of stdout for the JSON results and point fd 1 at stderr, so that
    whatever the libraries print (Python or C) cannot corrupt them; one thread for every math
    library. Returns the result stream."""
    result = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[name] = "1"
    return result
