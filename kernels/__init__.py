"""Triton kernels for the depth-attention of Attention Residuals.

* :mod:`.depth_attention` — fused forward + hand-written backward (``fused_depth_attention``,
  registered as the ``attnres::depth_attention_fwd/bwd`` custom ops);
* :mod:`.two_phase` — two-phase inference (paper Algorithm 1) in PyTorch and Triton;
* :mod:`.runtime` — whether the kernels can run on a device, and why not.

Importing this package does not import Triton; the kernel modules do. Which backend a model
call takes is decided in :mod:`attnres_search.kernels.attend`.
"""
