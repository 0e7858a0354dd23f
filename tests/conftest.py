"""Test-suite settings: one intra-op thread unless OMP_NUM_THREADS is set. The suite's networks are tiny,
where thread hand-offs cost more than they save; `make test-portability` sets OMP_NUM_THREADS (1 and 2) and
ATEN_CPU_CAPABILITY (default and avx2) to run the suite under other kernels and reduction orders."""

import os

import torch

if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)
