"""The depth-attention op of Attention Residuals, in one folder (as FLA keeps ``ops/<op>/``).

* :mod:`.reference` — the PyTorch ground truth (and the CPU path);
* :mod:`.attend` — :func:`.attend.attend`, the one-shot op a model calls;
* :mod:`.two_phase` — the two-phase schedule of Block AttnRes (paper Algorithm 1) for
  training and inference: :func:`.two_phase.phase1`, :func:`.two_phase.phase2`;
* :mod:`.block_cache` — the same schedule over completed blocks kept in one growing buffer,
  with hand-written backwards: what eager training runs on the PyTorch path (CPU);
* :mod:`.backend` — the one rule that picks kernel or reference (``ATTNRES_KERNEL``,
  :func:`.backend.set_backend`); :mod:`.runtime` — whether a kernel can take a call, and why not;
* :mod:`.fused`, :mod:`.two_phase_triton`, :mod:`.triton_base` — the Triton kernels, each
  pass with a hand-written backward.

Installed as ``attnres_search.kernels``; it imports nothing from ``attnres_search`` above
it. Importing this package, :mod:`.attend`, :mod:`.two_phase`, :mod:`.backend`,
:mod:`.runtime` or :mod:`.reference` does not import Triton; the kernel modules do, on the
first call that takes a kernel.
"""
