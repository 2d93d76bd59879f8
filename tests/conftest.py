"""Test-wide settings: one intra-op thread.

The suite's tensors are small; on a shared 2-core machine, torch's OpenMP threads
spin against each other and against other processes (a LeNet-5 step measured 300 ms
with 2 threads under load against 29 ms with 1). Subprocesses inherit the variable.
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
