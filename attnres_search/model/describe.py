"""What ``model describe`` shows: sizes, compute and, layer by layer, what each sublayer reads.

Everything here is arithmetic on the config and the rule's source plan: nothing is built,
so describing a billion-layer model answers at once instead of allocating it.
"""

from __future__ import annotations

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table

from attnres_search.model.config import ModelConfig
from attnres_search.model.flops import count_params, flops_per_token
from attnres_search.residual import preset_label, spec_for

MAX_LAYER_ROWS = 64  # deeper models show their first and last sublayers only


def describe_table(cfg: ModelConfig, name: str) -> Group:
    r = cfg.residual
    spec = spec_for(r)
    flops = flops_per_token(cfg)
    params = count_params(cfg)

    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("preset", f"{name} — {preset_label(name)}")
    summary.add_row("residual", ", ".join(f"{k}={v}" for k, v in r.to_dict().items() if v is not None))
    summary.add_row("shape", f"L_b={cfg.n_layers} blocks ({cfg.n_sublayers} sublayers), d_model={cfg.d_model}, "
                    f"heads={cfg.n_heads}, d_ff={cfg.ffn_dim}, vocab={cfg.vocab_size}, seq_len={cfg.seq_len}")
    s = spec.block_size(r, cfg.n_sublayers)
    if s is not None:
        summary.add_row("blocks", f"S={s} sublayers per block, N={cfg.n_sublayers // s} blocks + embedding")
    summary.add_row("parameters", f"{params['total']:,} total, {params['non_embedding']:,} "
                    f"non-embedding, {params['residual']:,} in the residual rule")
    summary.add_row("FLOPs/token", f"{flops['forward']:.4g} forward, {flops['train']:.4g} train "
                    f"(residual rule {flops['residual']:.3g})")

    layers = Table(title="what each sublayer reads", show_lines=False)
    layers.add_column("layer", justify="right")
    layers.add_column("type")
    layers.add_column("block", justify="right")
    layers.add_column("sources")
    n = cfg.n_sublayers
    if n + 1 > MAX_LAYER_ROWS:
        half = MAX_LAYER_ROWS // 2
        points = [*range(half), -1, *range(n + 1 - half, n + 1)]
    else:
        points = list(range(n + 1))
    plan = spec.source_plan(r, n) if n + 1 <= 4 * MAX_LAYER_ROWS else None
    for i in points:
        if i < 0:
            layers.add_row("…", "", "", f"{n + 1 - MAX_LAYER_ROWS} more")
            continue
        kind = "head" if i == n else ("attn" if i % 2 == 0 else "mlp")
        if plan is None:
            layers.add_row(str(i + 1) if i < n else "final", kind, "-", "(too deep to list)")
            continue
        block = plan.block[i]
        layers.add_row(str(i + 1) if i < n else "final", kind, str(block) if block is not None else "-",
                       ", ".join(plan.sources[i]))
    return Group(Panel(summary, title=f"model {name}", expand=False), layers)


def print_description(cfg: ModelConfig, name: str, console: "Console") -> None:
    console.print(describe_table(cfg, name))
