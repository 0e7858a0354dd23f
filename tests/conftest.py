"""Test-suite settings: one intra-op thread. The suite's networks are tiny, where thread hand-offs cost
more than they save, and a single thread keeps CPU float reductions in one fixed order."""

import torch

torch.set_num_threads(1)
