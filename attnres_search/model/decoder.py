"""The decoder-only language model shared by every variant: token embedding, 2·L_b
sublayers (attention, MLP, attention, ...), a residual rule that decides what each
sublayer reads, final RMSNorm and LM head."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from attnres_search.model.config import ModelConfig
from attnres_search.model.layers import Attention, RMSNorm, Rotary, SwiGLU, init_sublayer_
from attnres_search.residual import ResidualRule, spec_for
from attnres_search.residual.mixing import MixingRecorder


class AttnResLM(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, n_sub = cfg.d_model, cfg.n_sublayers
        self.embed = nn.Embedding(cfg.vocab_size, d)
        rotary = Rotary(d // cfg.n_heads, cfg.seq_len, cfg.rope_theta)
        self.sublayers = nn.ModuleList()
        for i in range(n_sub):
            if i % 2 == 0:
                layer: nn.Module = Attention(d, cfg.n_heads, rotary, cfg.norm_eps)
            else:
                layer = SwiGLU(d, cfg.ffn_dim, cfg.norm_eps)
            init_sublayer_(layer, n_sub)
            self.sublayers.append(layer)
        self.residual: ResidualRule = spec_for(cfg.residual).build(cfg.residual, n_sub, d)
        self.final_norm = RMSNorm(d, cfg.norm_eps)
        self.head = nn.Linear(d, cfg.vocab_size, bias=False)
        nn.init.normal_(self.embed.weight, 0.0, 0.02)
        nn.init.normal_(self.head.weight, 0.0, 0.02)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        self.recorded: dict[str, Any] = {}

    def forward(self, idx: Tensor, *, record: bool = False, keep_mixing: bool = False) -> Tensor:
        """Logits ``[B, T, vocab]``. With ``record``, fills :attr:`recorded` with each
        sublayer's output RMS, for AttnRes rules the mean depth-mixing weights ``alpha``
        over the rule's own sources and the depth-wise ``sinks``, and for every rule the
        effective mixing matrix M (``mixing``: mean and spread over tokens; see
        :mod:`attnres_search.residual.mixing`). ``keep_mixing`` also keeps M per token
        (``mixing_rows``), which tests check against the layer inputs."""
        rule = self.residual
        rule.record = record
        rule.recorded_alpha, rule.recorded_mixing, rule.recorded_weights = [], [], []
        recorder = MixingRecorder(tuple(idx.shape), keep=keep_mixing) if record else None
        output_rms: list[float] = []
        state = rule.begin(self.embed(idx))
        for i, layer in enumerate(self.sublayers):
            h = rule.layer_input(i, state)
            if recorder is not None:
                recorder.take(rule)  # reduce point i's row now: per-token rows of every point would pile up
            f = layer(h)
            if record:
                output_rms.append(f.detach().float().pow(2).mean().sqrt().item())
            rule.update(i, state, f)
        logits = self.head(self.final_norm(rule.final(state)))
        if recorder is not None:
            recorder.take(rule)
            n_points = self.cfg.n_sublayers + 1
            alpha = rule.recorded_alpha if len(rule.recorded_alpha) == n_points else [None] * n_points
            sources = [list(labels) for labels in spec_for(self.cfg.residual).source_plan(
                self.cfg.residual, n_points - 1).sources]
            self.recorded = {"output_rms": output_rms, "alpha": alpha, "sources": sources,
                             **recorder.document(n_points - 1, sources)}
            if keep_mixing:
                self.recorded["mixing_rows"] = recorder.rows
            rule.record = False
        return logits

    def param_kinds(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by role. ``hidden`` are the 2-D matrices inside sublayers (what Muon
        optimises); ``residual`` are the residual rule's, which never get weight decay
        because decaying them pulls a variant away from its uniform/identity start."""
        kinds: dict[str, list[nn.Parameter]] = {k: [] for k in ("hidden", "embedding", "head", "norm", "residual")}
        kinds["embedding"].append(self.embed.weight)
        if self.head.weight is not self.embed.weight:
            kinds["head"].append(self.head.weight)
        kinds["norm"].append(self.final_norm.weight)
        for layer in self.sublayers:
            for p in layer.parameters():
                kinds["hidden" if p.dim() == 2 else "norm"].append(p)
        kinds["residual"].extend(self.residual.parameters())
        return kinds

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW parameter groups: decay on matrices, embedding and head only."""
        kinds = self.param_kinds()
        decay = kinds["hidden"] + kinds["embedding"] + kinds["head"]
        no_decay = kinds["norm"] + kinds["residual"]
        return [
            {"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
        ]

    def num_params(self, non_embedding: bool = False) -> int:
        total = sum(p.numel() for p in self.parameters())
        return total - self.embed.weight.numel() if non_embedding else total
