"""Session-wide test setup."""

import os

import torch

# Triton decides between compiling kernels for a GPU and running them in its CPU interpreter
# when triton.language is first imported, and reads the switch again while running; so on a
# machine without a GPU it is switched on here, before any test module can import Triton, and
# the kernel tests run on CPU tensors. It concerns Triton kernels only, which nothing else runs
# without a GPU.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
