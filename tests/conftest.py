"""Shared test settings: run from the repo root's modules, one CPU thread.

The tests use tiny tensors, where OpenMP threads only busy-wait on a 2-core machine
(and CI's), so one thread is both faster and deterministic."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
torch.set_num_threads(1)
