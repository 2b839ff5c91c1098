"""The model and every residual rule, checked against hand-written float64 equations."""

from __future__ import annotations


import pytest
import torch

from attnres_search.model.config import ModelConfig
from attnres_search.residual import PRESETS, ResidualConfig, preset, spec_for
from attnres_search.model.flops import matmul_params
from attnres_search.model.decoder import AttnResLM
from attnres_search.residual.mhc import MHCRule, sinkhorn

EPS = 1e-6


def tiny(residual: ResidualConfig, n_layers: int = 4, d_model: int = 32, **kw) -> ModelConfig:
    return ModelConfig(vocab_size=64, n_layers=n_layers, d_model=d_model, n_heads=4, seq_len=16, residual=residual, **kw)


def layers_for(name: str) -> int:
    """Smallest depth at which a preset's block size divides the sublayers."""
    r = preset(name)
    return max(2, (r.block_size or 2) // 2) if r.kind == "block" and r.block_size else 4


def source_labels(cfg: ModelConfig, i: int) -> list[str]:
    """What point ``i`` reads, from the rule's source plan (what describe and diagnostics print)."""
    return list(spec_for(cfg.residual).source_plan(cfg.residual, cfg.n_sublayers).sources[i])


def randomize_residual_(model: AttnResLM, generator: torch.Generator, scale: float = 0.5) -> None:
    """Give zero-initialised residual parameters random values so every path carries signal."""
    with torch.no_grad():
        for p in model.residual.parameters():
            p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * scale)


def capture_io(model: AttnResLM) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list]:
    """Hooks recording each sublayer's input h_i and raw output f_i, and the head's input."""
    inputs, outputs, final_in = [], [], []
    handles = []

    def record(module, args, out) -> None:
        inputs.append(args[0])
        outputs.append(out)

    def record_final(module, args) -> None:
        final_in.append(args[0])

    for layer in model.sublayers:
        handles.append(layer.register_forward_hook(record))
    handles.append(model.final_norm.register_forward_pre_hook(record_final))
    return inputs, outputs, final_in, handles


def rmsnorm64(v: torch.Tensor, gain: torch.Tensor | None) -> torch.Tensor:
    if gain is None:
        return v
    return v / torch.sqrt((v * v).mean(-1, keepdim=True) + EPS) * gain


def expected_sources(l: int, fs: list[torch.Tensor], v0: torch.Tensor, s: int, n_layers: int, window: int | None):
    """Sources of point l (0-based; l == n_layers is the final aggregation), written out
    from the paper's definitions, independently of the implementation."""
    n = l // s if l < n_layers else n_layers // s
    blocks = [v0] + [sum(fs[k * s : (k + 1) * s]) for k in range(n)]
    sources = list(blocks)
    start = n * s
    if l > start:
        sources.append(sum(fs[start:l]))
    if window is not None and len(sources) - 1 > window:
        sources = [sources[0]] + sources[-window:]
    return sources


def attnres_by_hand(sources, w, gain, score):
    logits = torch.stack([(rmsnorm64(v, gain) * w).sum(-1) for v in sources])
    if score == "softmax":
        alpha = torch.exp(logits - logits.max(0).values) / torch.exp(logits - logits.max(0).values).sum(0)
    else:
        alpha = 1 / (1 + torch.exp(-logits))
    return sum(a.unsqueeze(-1) * v for a, v in zip(alpha, sources))


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_trains_one_step(name: str) -> None:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = AttnResLM(tiny(preset(name), n_layers=layers_for(name)))
    randomize_residual_(model, g)
    idx = torch.randint(0, 64, (2, 16), generator=g)
    logits = model(idx)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx.flatten())
    assert torch.isfinite(loss)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} gets no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}: {pname} has an all-zero gradient"


@pytest.mark.parametrize(
    "residual, n_layers",
    [
        (ResidualConfig("block", block_size=2), 4),
        (ResidualConfig("block", block_size=4), 4),
        (ResidualConfig("block", block_size=3), 3),
        (ResidualConfig("block", num_blocks=2), 3),
        (ResidualConfig("full"), 3),
        (ResidualConfig("full", window=2), 4),
        (ResidualConfig("block", block_size=2, window=2), 4),
        (ResidualConfig("full", score="sigmoid"), 3),
        (ResidualConfig("block", block_size=2, key_norm="none"), 3),
    ],
    ids=lambda x: str(x) if isinstance(x, int) else f"{x.kind}-S{x.block_size}-N{x.num_blocks}-W{x.window}-{x.score}-{x.key_norm}",
)
def test_attnres_matches_hand_unrolled_float64_loop(residual: ResidualConfig, n_layers: int) -> None:
    torch.manual_seed(1)
    cfg = tiny(residual, n_layers=n_layers)
    model = AttnResLM(cfg).double()
    randomize_residual_(model, torch.Generator().manual_seed(2))
    idx = torch.randint(0, 64, (2, 16))
    inputs, outputs, final_in, handles = capture_io(model)
    model(idx)
    for h in handles:
        h.remove()

    L = cfg.n_sublayers
    s = residual.resolve_block_size(L)
    rule = model.residual
    v0 = model.embed(idx)
    assert torch.equal(inputs[0], v0) or residual.score == "sigmoid", "layer 1 must see only the embedding"
    for l in range(L + 1):
        sources = expected_sources(l, outputs, v0, s, L, residual.window)
        assert len(sources) == len(source_labels(cfg, l))
        gain = rule.key_gains[l] if residual.key_norm == "rmsnorm" else None
        expected = attnres_by_hand(sources, rule.queries[l], gain, residual.score)
        got = inputs[l] if l < L else final_in[0]
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12, msg=f"point {l}")


def test_layer_one_sees_only_the_embedding_and_partials_reset() -> None:
    cfg = tiny(ResidualConfig("block", block_size=4), n_layers=4)
    assert source_labels(cfg, 0) == ["b0"]
    assert source_labels(cfg, 3) == ["b0", "b1^3"]
    assert source_labels(cfg, 4) == ["b0", "b1"]  # first layer of block 2: no partial, not seeded
    assert source_labels(cfg, 5) == ["b0", "b1", "b2^1"]
    assert source_labels(cfg, 8) == ["b0", "b1", "b2"]  # the head reads every completed block
    swa = tiny(ResidualConfig("full", window=3), n_layers=4)
    assert source_labels(swa, 7) == ["b0", "f5", "f6", "f7"]  # v0 + the 3 most recent of f1..f7


def test_block_size_one_equals_full_exactly() -> None:
    torch.manual_seed(3)
    full = AttnResLM(tiny(ResidualConfig("full"))).double()
    randomize_residual_(full, torch.Generator().manual_seed(4))
    block = AttnResLM(tiny(ResidualConfig("block", block_size=1))).double()
    block.load_state_dict(full.state_dict())
    idx = torch.randint(0, 64, (2, 16))
    assert torch.equal(full(idx), block(idx))


@pytest.mark.parametrize("name", ["full", "block-s2", "block-s4", "full-nokeynorm", "block-mh16", "full-inputq", "full-static", "swa-8", "full-sigmoid"])
def test_zero_queries_give_uniform_mean_of_sources(name: str) -> None:
    torch.manual_seed(5)
    cfg = ModelConfig(vocab_size=64, n_layers=6, d_model=32, n_heads=4, seq_len=16, residual=preset(name, **({"heads": 4} if name == "block-mh16" else {})))
    model = AttnResLM(cfg).double()
    idx = torch.randint(0, 64, (2, 16))
    inputs, outputs, final_in, handles = capture_io(model)
    model(idx)
    v0 = model.embed(idx)
    s = cfg.residual.resolve_block_size(cfg.n_sublayers)
    for l in range(cfg.n_sublayers + 1):
        sources = expected_sources(l, outputs, v0, s, cfg.n_sublayers, cfg.residual.window)
        if cfg.residual.score == "sigmoid":
            expected = 0.5 * sum(sources)  # sigmoid(0): independent gates, not renormalised
        else:
            expected = sum(sources) / len(sources)
        got = inputs[l] if l < cfg.n_sublayers else final_in[0]
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12, msg=f"{name} point {l}")


@pytest.mark.parametrize("kind", ["mhc", "mhc_lite"])
def test_mhc_residual_matrix_is_doubly_stochastic(kind: str) -> None:
    torch.manual_seed(6)
    model = AttnResLM(tiny(ResidualConfig(kind)))
    # Logits of order 1 (a trained model's range); far larger ones need more Sinkhorn steps.
    randomize_residual_(model, torch.Generator().manual_seed(7), scale=0.05)
    rule = model.residual
    assert isinstance(rule, MHCRule)
    streams = torch.randn(2, 16, 4, 32)  # token-major: [..., m, d]
    for i in range(rule.n_sublayers):
        pre, post, res = rule.maps(i, streams)
        assert res.shape == (2, 16, 4, 4)
        assert (res >= 0).all()
        tol = 1e-6 if kind == "mhc_lite" else 1e-5
        torch.testing.assert_close(res.sum(-1), torch.ones(2, 16, 4), atol=tol, rtol=0)
        torch.testing.assert_close(res.sum(-2), torch.ones(2, 16, 4), atol=tol, rtol=0)
        assert ((pre > 0) & (pre < 1)).all() and ((post > 0) & (post < 2)).all()
        assert res.std() > 0.01, "randomised maps should not be constant"


def test_sinkhorn_converges_from_random_logits() -> None:
    res = sinkhorn(0.5 * torch.randn(1000, 4, 4, generator=torch.Generator().manual_seed(8)) + torch.eye(4), 20)
    torch.testing.assert_close(res.sum(-1), torch.ones(1000, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(res.sum(-2), torch.ones(1000, 4), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["denseformer", "mhc", "mhc-lite"])
def test_baseline_equivalent_variants_start_as_the_baseline(name: str) -> None:
    torch.manual_seed(9)
    base = AttnResLM(tiny(preset("baseline")))
    variant = AttnResLM(tiny(preset(name)))
    missing, unexpected = variant.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("residual.") for k in missing)
    idx = torch.randint(0, 64, (2, 16))
    torch.testing.assert_close(variant(idx), base(idx), atol=1e-5, rtol=0)


def test_residual_parameters_are_out_of_weight_decay() -> None:
    model = AttnResLM(tiny(preset("block-s2")))
    groups = {g["name"]: g for g in model.param_groups(0.1)}
    residual_ids = {id(p) for p in model.residual.parameters()}
    assert residual_ids and residual_ids <= {id(p) for p in groups["no_decay"]["params"]}
    assert groups["no_decay"]["weight_decay"] == 0.0 and groups["decay"]["weight_decay"] == 0.1
    all_ids = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(all_ids) == sorted(id(p) for p in model.parameters()), "every parameter in exactly one group"
    kinds = model.param_kinds()
    assert all(p.dim() == 2 for p in kinds["hidden"]) and len(kinds["hidden"]) == 2 * 2 * 4


def test_flop_accounting_counts_the_models_matrices() -> None:
    cfg = tiny(preset("baseline"))
    model = AttnResLM(cfg)
    counted = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and not n.startswith("embed"))
    assert matmul_params(cfg) == counted


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: tiny(ResidualConfig("block", block_size=3), n_layers=4), "block_size"),
        (lambda: tiny(ResidualConfig("block", num_blocks=3), n_layers=4), "num_blocks"),
        (lambda: preset("block-s5"), "preset"),
        (lambda: ModelConfig(d_model=30, n_heads=4), "n_heads"),
        (lambda: tiny(ResidualConfig("block", block_size=2, heads=5)), "heads"),
        (lambda: ResidualConfig("full", score="tanh"), "score"),
        (lambda: ResidualConfig("attn"), "kind"),
        (lambda: ModelConfig.from_dict({"d_modle": 64}), "d_modle"),
    ],
)
def test_bad_input_names_the_field(make, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        make()


def test_describe_cli_prints_counts_and_sources() -> None:
    from click.testing import CliRunner

    from attnres_search.cli import cli

    result = CliRunner().invoke(cli, ["model", "describe", "block-s4", "--layers", "4", "--width", "64"], terminal_width=200)
    assert result.exit_code == 0, result.output
    model = AttnResLM(ModelConfig(n_layers=4, d_model=64, n_heads=4, residual=preset("block-s4")))
    assert f"{model.num_params():,} total" in result.output
    assert "b0, b1, b2^1" in result.output
    bad = CliRunner().invoke(cli, ["model", "describe", "block-s4", "--layers", "3"])
    assert bad.exit_code == 2 and "block_size=4 does not divide" in bad.output


def test_sinkhorn_equals_the_log_space_iteration_with_its_gradient_in_float64() -> None:
    from attnres_search.residual.mhc import sinkhorn_reference

    g = torch.Generator().manual_seed(12)
    logits = (torch.randn(3, 5, 4, 4, generator=g, dtype=torch.float64) + 2 * torch.eye(4, dtype=torch.float64))
    logits.requires_grad_(True)
    weights = torch.randn(3, 5, 4, 4, generator=g, dtype=torch.float64)
    for iters in (1, 2, 20):
        ours = sinkhorn(logits, iters)
        ref = sinkhorn_reference(logits, iters)
        torch.testing.assert_close(ours, ref, atol=1e-13, rtol=0)
        (g_ours,) = torch.autograd.grad((ours * weights).sum(), logits)
        (g_ref,) = torch.autograd.grad((ref * weights).sum(), logits)
        torch.testing.assert_close(g_ours, g_ref, atol=1e-12, rtol=0)
    assert torch.autograd.gradcheck(lambda x: sinkhorn(x, 3), (logits[:1, :2].detach().requires_grad_(True),))


def test_mhc_coefficients_equal_autograd_in_float64() -> None:
    """The hand-written projection (bias + RMSNorm(x) @ phi) against autograd through the
    textbook expression: values and the gradients of x, phi and bias."""
    from attnres_search.residual.mhc import normalized_projection

    g = torch.Generator().manual_seed(13)
    x = (torch.randn(6, 12, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    phi = torch.randn(12, 5, generator=g, dtype=torch.float64).requires_grad_(True)
    bias = torch.randn(5, generator=g, dtype=torch.float64).requires_grad_(True)
    upstream = torch.randn(6, 5, generator=g, dtype=torch.float64)
    ours = normalized_projection(x, phi, bias)
    ref = bias + (x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-6)) @ phi
    torch.testing.assert_close(ours, ref, atol=1e-13, rtol=0)
    got = torch.autograd.grad((ours * upstream).sum(), (x, phi, bias))
    want = torch.autograd.grad((ref * upstream).sum(), (x, phi, bias))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    assert torch.autograd.gradcheck(lambda *t: normalized_projection(*t), (x, phi, bias))
    # Its backward treats the inverse RMS as a constant: a second derivative would be wrong,
    # so asking for one is an error rather than a silently wrong number.
    (d_x,) = torch.autograd.grad(normalized_projection(x, phi, bias).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        d_x.sum().backward()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_trains_under_cpu_autocast(name: str) -> None:
    """``train --precision bf16-mixed`` on CPU: the hand-written residual functions (block
    cache, mHC projection) compute in fp32 whatever autocast does around them; they once
    received bf16 products from autocast and failed on mixed dtypes."""
    torch.manual_seed(14)
    model = AttnResLM(tiny(preset(name), n_layers=16))  # block-s32 needs 32 sublayers
    idx = torch.randint(0, 64, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(idx)
    out.float().square().mean().backward()
    assert all(p.grad is None or p.grad.isfinite().all() for p in model.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.residual.parameters()) or not list(
        model.residual.parameters())
    torch.testing.assert_close(out.float(), model(idx), atol=3e-2, rtol=0)
