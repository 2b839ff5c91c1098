"""What the residual rule does to the network, measured while it trains.

Every ``every`` steps and after the last step, one snapshot holds, per sublayer:
- ``output_rms``: RMS of its raw output f_i on a fixed validation batch; the paper's
  claim is that AttnRes keeps these bounded where PreNorm lets them grow with depth;
- ``grad_norm``: the L2 norm of its parameters' gradients on that step's training batch,
  after backward and before clipping and the optimizer step;
- ``alpha`` (AttnRes rules only; ``None`` otherwise): the mean depth-mixing weights of
  each of the L + 1 aggregation points (the last is the one before the head) over the
  sources named in ``sources``, averaged over the validation batch's tokens and heads;
- ``mixing`` (every rule): the effective depth-mixing matrix M, h_l = sum_i M_{i->l} v_i
  over the embedding v_0 and every sublayer output v_i = f_i (``sources``: v0, f1, ...),
  as the rule forms it, unnormalised: ``mean`` (row l has l + 1 entries) over the
  validation batch's tokens and channel groups, and ``std``, its spread over them
  (see :mod:`attnres_search.residual.mixing`);
- ``sinks`` (AttnRes rules only; ``None`` otherwise): per point and source of ``alpha``,
  the fraction of those tokens on which the source takes more than k times the uniform
  weight, and the (point, source) pairs where that fraction reaches p (``flagged``).

Snapshots go to ``diagnostics.json`` (rewritten after each one, so a crashed run keeps
what it measured) and travel in checkpoints, so a resumed run keeps its history.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from attnres_search.model.decoder import AttnResLM


def sublayer_names(n_sublayers: int) -> list[str]:
    """``attn1, mlp1, attn2, ...``: sublayer i is attention for even i, MLP for odd i."""
    return [f"{'attn' if i % 2 == 0 else 'mlp'}{i // 2 + 1}" for i in range(n_sublayers)]


def sublayer_grad_norms(model: AttnResLM) -> list[float]:
    """Gradient norm per sublayer, with one device sync for all of them."""
    norms = []
    for layer in model.sublayers:
        grads = [p.grad.detach().float().pow(2).sum() for p in layer.parameters() if p.grad is not None]
        norms.append(torch.stack(grads).sum().sqrt() if grads else torch.zeros((), device=next(layer.parameters()).device))
    return torch.stack(norms).tolist()


class DiagnosticsCallback(L.Callback):
    def __init__(self, every: int, probe_inputs: Tensor, path: str | Path | None = None) -> None:
        if every < 1:
            raise ValueError(f"diagnostics_every must be a positive integer, got {every}")
        self.every = every
        self.probe_inputs = probe_inputs
        self.path = Path(path) if path is not None else None
        self.snapshots: list[dict[str, Any]] = []
        self._pending_grads: list[float] | None = None

    def _due(self, trainer: L.Trainer, steps_done: int) -> bool:
        return steps_done % self.every == 0 or steps_done == trainer.max_steps

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if self._due(trainer, trainer.global_step + 1):
            self._pending_grads = sublayer_grad_norms(pl_module.model)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._pending_grads is None or not self._due(trainer, trainer.global_step):
            return
        self.snapshots.append(self._snapshot(trainer, pl_module, self._pending_grads))
        self._pending_grads = None
        if trainer.is_global_zero:
            self.write(pl_module.model)

    @torch.no_grad()
    def _snapshot(self, trainer: L.Trainer, pl_module: L.LightningModule, grad_norms: list[float]) -> dict[str, Any]:
        model: AttnResLM = pl_module.model
        was_training = model.training
        model.eval()
        try:
            with trainer.precision_plugin.forward_context():
                # .forward, not __call__: it skips a torch.compile-d wrapper, which would
                # recompile for the recording path and break its graph at every .item().
                model.forward(self.probe_inputs.to(pl_module.device), record=True)
        finally:
            model.train(was_training)
        rec = model.recorded
        return {
            "step": trainer.global_step,
            "output_rms": rec["output_rms"],
            "grad_norm": grad_norms,
            "alpha": rec["alpha"],
            "sources": rec["sources"],
            "mixing": rec["mixing"],
            "sinks": rec["sinks"],
        }

    def document(self, model: AttnResLM) -> dict[str, Any]:
        """The whole record: what was measured and every snapshot."""
        return {
            "residual": model.cfg.residual.to_dict(),
            "layer_names": sublayer_names(model.cfg.n_sublayers),
            "snapshots": self.snapshots,
        }

    def summary(self) -> dict[str, Any]:
        """The final snapshot (empty if none was taken), for :class:`RunResult`."""
        return dict(self.snapshots[-1]) if self.snapshots else {}

    def write(self, model: AttnResLM) -> None:
        """Atomically replace the JSON file, so a reader never sees half a document."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.document(model)))
        tmp.replace(self.path)

    def state_dict(self) -> dict[str, Any]:
        return {"snapshots": self.snapshots}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.snapshots = list(state_dict["snapshots"])
