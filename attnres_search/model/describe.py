"""What ``model describe`` shows: sizes, compute and, layer by layer, what each sublayer reads."""

from __future__ import annotations

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table

from attnres_search.model.config import ModelConfig, preset_label
from attnres_search.model.flops import flops_per_token
from attnres_search.model.decoder import AttnResLM


def describe_table(cfg: ModelConfig, name: str) -> Group:
    model = AttnResLM(cfg)
    r = cfg.residual
    flops = flops_per_token(cfg)
    residual_params = sum(p.numel() for p in model.residual.parameters())

    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("preset", f"{name} — {preset_label(name)}")
    summary.add_row("residual", ", ".join(f"{k}={v}" for k, v in r.to_dict().items() if v is not None))
    summary.add_row("shape", f"L_b={cfg.n_layers} blocks ({cfg.n_sublayers} sublayers), d_model={cfg.d_model}, "
                    f"heads={cfg.n_heads}, d_ff={cfg.ffn_dim}, vocab={cfg.vocab_size}, seq_len={cfg.seq_len}")
    if r.is_attnres:
        s = r.resolve_block_size(cfg.n_sublayers)
        summary.add_row("blocks", f"S={s} sublayers per block, N={cfg.n_sublayers // s} blocks + embedding")
    summary.add_row("parameters", f"{model.num_params():,} total, {model.num_params(non_embedding=True):,} "
                    f"non-embedding, {residual_params:,} in the residual rule")
    summary.add_row("FLOPs/token", f"{flops['forward']:.4g} forward, {flops['train']:.4g} train "
                    f"(residual rule {flops['residual']:.3g})")

    layers = Table(title="what each sublayer reads", show_lines=False)
    layers.add_column("layer", justify="right")
    layers.add_column("type")
    layers.add_column("block", justify="right")
    layers.add_column("sources")
    for i in range(cfg.n_sublayers + 1):
        kind = "head" if i == cfg.n_sublayers else ("attn" if i % 2 == 0 else "mlp")
        block = str(i // r.resolve_block_size(cfg.n_sublayers) + 1) if r.is_attnres and i < cfg.n_sublayers else "-"
        layers.add_row(str(i + 1) if i < cfg.n_sublayers else "final", kind, block,
                       ", ".join(model.residual.source_labels(i)))
    return Group(Panel(summary, title=f"model {name}", expand=False), layers)


def print_description(cfg: ModelConfig, name: str, console: Console | None = None) -> None:
    (console or Console()).print(describe_table(cfg, name))
