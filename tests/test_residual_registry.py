"""The residual-rule registry: a rule is one file (or, here, one test module) and everything
else — the model, ``model describe``, FLOPs, parameter counts, reports, the CLI — reads its
spec. New rules (ReZero, hyper-connections) start where their initialisation says."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor, nn

from attnres_search.model.config import ModelConfig
from attnres_search.model.decoder import AttnResLM
from attnres_search.model.flops import count_params, flops_per_token
from attnres_search.residual import (PRESETS, ResidualConfig, ResidualRule, RuleSpec, SourcePlan, preset,
                                     register_preset, register_rule)
from attnres_search.residual.attnres import AttnResConfig, source_counts, source_indices
from attnres_search.residual.registry import unregister_rule
from cli_runner import cli


def tiny(residual: ResidualConfig, n_layers: int = 4, d_model: int = 32) -> ModelConfig:
    return ModelConfig(vocab_size=64, n_layers=n_layers, d_model=d_model, n_heads=4, seq_len=16, residual=residual)


def layers_for(name: str) -> int:
    r = preset(name)
    return max(2, (r.block_size or 2) // 2) if r.kind == "block" and r.block_size else 4


# ---------------------------------------------------------------- a rule defined outside the package
@dataclass(frozen=True)
class HalfStepConfig(ResidualConfig):
    """h_{i+1} = h_i + g_i * f_i with g_i = 0.5 at init: a toy rule with one field."""

    kind: str = "toy_half"
    init_gate: float = 0.5
    KINDS: ClassVar[tuple[str, ...]] = ("toy_half",)

    def validate(self) -> None:
        if not 0 < self.init_gate <= 1:
            raise ValueError(f"init_gate must be in (0, 1], got {self.init_gate}")


class HalfStepRule(ResidualRule):
    def __init__(self, cfg: HalfStepConfig, n_sublayers: int, d_model: int) -> None:
        super().__init__(n_sublayers, d_model)
        self.gates = nn.Parameter(torch.full((n_sublayers,), cfg.init_gate))

    def begin(self, v0: Tensor) -> list[Tensor]:
        return [v0]

    def layer_input(self, i: int, state: list[Tensor]) -> Tensor:
        return state[0]

    def update(self, i: int, state: list[Tensor], f: Tensor) -> None:
        state[0] = state[0] + self.gates[i].to(f.dtype) * f

    def final(self, state: list[Tensor]) -> Tensor:
        return state[0]


class HalfStepSpec(RuleSpec):
    config = HalfStepConfig

    def build(self, cfg: HalfStepConfig, n_sublayers: int, d_model: int) -> HalfStepRule:
        return HalfStepRule(cfg, n_sublayers, d_model)

    def flops_per_token(self, cfg: HalfStepConfig, n_sublayers: int, d_model: int) -> float:
        return 2.0 * n_sublayers * d_model + 12345  # a marker the test looks for

    def num_params(self, cfg: HalfStepConfig, n_sublayers: int, d_model: int) -> int:
        return n_sublayers

    def source_plan(self, cfg: HalfStepConfig, n_sublayers: int) -> SourcePlan:
        return SourcePlan(tuple((f"toy-stream@{i}",) for i in range(n_sublayers + 1)), (None,) * (n_sublayers + 1))

    def label(self, cfg: HalfStepConfig, n_sublayers: int | None) -> str:
        return f"toy half-step g0={cfg.init_gate}"


@pytest.fixture
def toy_rule() -> Any:
    spec = register_rule(HalfStepSpec())
    register_preset("toy-half", ResidualConfig("toy_half"), "Toy half-step")
    yield spec
    unregister_rule(spec)
    PRESETS.pop("toy-half", None)


def test_a_rule_registered_from_outside_trains_describes_counts_and_reports(toy_rule, monkeypatch, capsys) -> None:
    cfg = tiny(ResidualConfig("toy_half", init_gate=0.25))
    assert isinstance(cfg.residual, HalfStepConfig)
    torch.manual_seed(0)
    model = AttnResLM(cfg)
    idx = torch.randint(0, 64, (2, 16))
    loss = torch.nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.flatten())
    loss.backward()
    assert model.residual.gates.grad is not None and model.residual.gates.grad.abs().sum() > 0
    assert torch.allclose(model.residual.gates, torch.full((8,), 0.25))

    # FLOPs and parameter counts come from the spec.
    assert flops_per_token(cfg)["residual"] == 2.0 * 8 * 32 + 12345
    assert count_params(cfg)["residual"] == 8 == sum(p.numel() for p in model.residual.parameters())
    assert count_params(cfg)["total"] == model.num_params()

    # model describe shows its source plan; the config round-trips through a dict.
    code, out, err = cli(["model", "describe", "toy-half", "--layers", "2", "--width", "32"], monkeypatch, capsys)
    assert code == 0, err
    assert "toy-stream@3" in out and "Toy half-step" in out
    assert ResidualConfig.from_dict(cfg.residual.to_dict()) == cfg.residual
    with pytest.raises(ValueError, match="init_gate"):
        ResidualConfig("toy_half", init_gate=2.0)

    # Reports label it through the spec.
    from attnres_search.reports.build import block_size, describe_residual, paper_family

    assert describe_residual(cfg.residual.to_dict(), 4) == "toy half-step g0=0.25"
    assert block_size(cfg.residual.to_dict(), 4) is None
    assert paper_family(cfg.residual.to_dict()) == "toy-half"


# ---------------------------------------------------------------- the new rules
@pytest.mark.parametrize("name", ["hc", "hc-dynamic", "denseformer"])  # mHC: see test_model (float32 sigmoid bias)
def test_baseline_equivalent_rules_start_as_the_baseline_in_float64(name: str) -> None:
    torch.manual_seed(9)
    base = AttnResLM(tiny(preset("baseline"))).double()
    variant = AttnResLM(tiny(preset(name))).double()
    missing, unexpected = variant.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("residual.") for k in missing)
    idx = torch.randint(0, 64, (2, 16))
    torch.testing.assert_close(variant(idx), base(idx), atol=1e-12, rtol=0)


def test_rezero_starts_as_the_identity_on_the_embedding() -> None:
    torch.manual_seed(10)
    model = AttnResLM(tiny(preset("rezero"))).double()
    seen: list[Tensor] = []
    model.final_norm.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    idx = torch.randint(0, 64, (2, 16))
    model(idx)
    torch.testing.assert_close(seen[0], model.embed(idx), atol=1e-12, rtol=0)
    # ... and its gates still learn from step 0 (f_i is non-zero, so d loss / d alpha_i is).
    loss = torch.nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.flatten())
    loss.backward()
    assert (model.residual.alpha.grad.abs() > 0).all()


def test_hyper_connections_match_their_equations_in_float64() -> None:
    """h = sum_k pre_k X_k; X'_j = sum_k res_kj X_k + post_j f, written out by hand."""
    torch.manual_seed(11)
    for dynamic in (False, True):
        model = AttnResLM(tiny(preset("hc-dynamic" if dynamic else "hc"), n_layers=2)).double()
        rule = model.residual
        with torch.no_grad():
            for p in rule.parameters():
                p.add_(0.3 * torch.randn_like(p))
        inputs: list[Tensor] = []
        outputs: list[Tensor] = []
        def record(module: nn.Module, args: tuple, out: Tensor) -> None:
            inputs.append(args[0])
            outputs.append(out)

        for layer in model.sublayers:
            layer.register_forward_hook(record)
        final_in: list[Tensor] = []

        def record_final(module: nn.Module, args: tuple) -> None:
            final_in.append(args[0])

        model.final_norm.register_forward_pre_hook(record_final)
        idx = torch.randint(0, 64, (2, 16))
        model(idx)
        X = [model.embed(idx)] * 4
        for i in range(4):
            pre, res, post = rule.pre[i], rule.res[i], rule.post[i]
            if dynamic:
                t = [torch.tanh((x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6)) @ rule.proj[i]) for x in X]
                a, b = rule.scale[i]
                pre_k = [pre[k] + a * t[k][..., 0] for k in range(4)]
                res_kj = [[res[k, j] + a * t[k][..., 1 + j] for j in range(4)] for k in range(4)]
                post_j = [post[j] + b * t[j][..., 5] for j in range(4)]
            else:
                pre_k = [pre[k] for k in range(4)]
                res_kj = [[res[k, j] for j in range(4)] for k in range(4)]
                post_j = [post[j] for j in range(4)]
            expand = (lambda w: w.unsqueeze(-1) if torch.is_tensor(w) and w.dim() else w)
            h = sum(expand(pre_k[k]) * X[k] for k in range(4))
            torch.testing.assert_close(inputs[i], h, atol=1e-12, rtol=0)
            f = outputs[i]
            X = [sum(expand(res_kj[k][j]) * X[k] for k in range(4)) + expand(post_j[j]) * f for j in range(4)]
        torch.testing.assert_close(final_in[0], sum(X) / 4, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", ["rezero", "hc", "hc-dynamic", "highway"])
def test_new_rules_appear_in_describe_flops_and_reports(name: str, monkeypatch, capsys) -> None:
    code, out, err = cli(["model", "describe", name, "--layers", "2", "--width", "32"], monkeypatch, capsys)
    assert code == 0, err
    cfg = ModelConfig(n_layers=2, d_model=32, n_heads=4, residual=preset(name))
    model = AttnResLM(cfg)
    assert f"{model.num_params():,} total" in out
    assert flops_per_token(cfg)["residual"] > 0
    from attnres_search.reports.build import describe_residual

    label = describe_residual(cfg.residual.to_dict(), 2)
    assert label.startswith(name.split("-")[0])


# ---------------------------------------------------------------- accounting without allocation
@pytest.mark.parametrize("name", list(PRESETS))
def test_arithmetic_parameter_count_matches_the_built_model(name: str) -> None:
    cfg = tiny(preset(name), n_layers=layers_for(name))
    model = AttnResLM(cfg)
    counts = count_params(cfg)
    assert counts["total"] == model.num_params()
    assert counts["non_embedding"] == model.num_params(non_embedding=True)
    assert counts["residual"] == sum(p.numel() for p in model.residual.parameters())


def test_closed_form_source_counts_equal_the_source_plan() -> None:
    for kind, s, n_sub, window in itertools.product(["full", "block"], [1, 2, 3, 4, 8], [2, 4, 6, 8, 12, 24],
                                                     [None, 1, 2, 3, 8]):
        if (kind == "full" and s != 1) or (kind == "block" and n_sub % s):
            continue
        cfg = AttnResConfig(kind, block_size=s if kind == "block" else None, window=window)
        points = [source_indices(i, s, n_sub, window) for i in range(n_sub + 1)]
        counts = source_counts(cfg, n_sub)
        assert counts.sources == sum(len(p.indices) for p in points), (kind, s, n_sub, window)
        assert counts.single_source_points == sum(len(p.indices) == 1 for p in points)
        assert counts.partial_adds == sum(p.has_partial for p in points[:-1])


@pytest.mark.timeout(30)
def test_describe_a_billion_layer_model_answers_without_building_it(monkeypatch, capsys) -> None:
    for name in ("baseline", "full", "block-s4", "mhc", "denseformer"):
        code, out, err = cli(["model", "describe", name, "--layers", "1000000000"], monkeypatch, capsys)
        assert code == 0, err
        assert "1,000,000,000 blocks" in out.replace("L_b=1000000000", "1,000,000,000 blocks")


# ---------------------------------------------------------------- fields a rule does not use
@pytest.mark.parametrize(
    "kind, fields, field",
    [
        ("full", {"mixing": "input_independent", "score": "sigmoid"}, "score"),
        ("full", {"mixing": "input_independent", "key_norm": "none"}, "key_norm"),
        ("full", {"mixing": "input_independent", "query": "input_dependent"}, "query"),
        ("prenorm", {"score": "sigmoid"}, "score"),
        ("denseformer", {"block_size": 4}, "block_size"),
        ("mhc_lite", {"sinkhorn_iters": 5}, "sinkhorn_iters"),
        ("full", {"num_blocks": 4}, "num_blocks"),
        ("hc", {"sinkhorn_iters": 5}, "sinkhorn_iters"),
    ],
)
def test_a_field_the_rule_does_not_use_is_an_error_naming_it(kind: str, fields: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ResidualConfig(kind, **fields)
    with pytest.raises(ValueError, match=field):
        ResidualConfig.from_dict({"kind": kind, **fields})


def test_unused_residual_field_in_a_space_is_exit_2_naming_it(tmp_path, monkeypatch, capsys) -> None:
    space = tmp_path / "s.yaml"
    space.write_text("model: {n_layers: 1, d_model: 16, n_heads: 2, seq_len: 16}\n"
                     "train: {tokens: 2048, batch_size: 2}\n"
                     "variants: [baseline, {name: static-sig, preset: full-static, score: sigmoid}]\n")
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(["spaces", "show", str(space)], monkeypatch, capsys)
    assert code == 2
    assert "score" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "studies.db").exists()


def test_stored_configs_with_every_legacy_field_still_load() -> None:
    legacy = {"kind": "prenorm", "block_size": None, "num_blocks": None, "score": "softmax", "key_norm": "rmsnorm",
              "query": "learned", "mixing": "input_dependent", "heads": 1, "window": None, "streams": 4,
              "sinkhorn_iters": 20}
    assert ResidualConfig.from_dict(legacy, lenient=True) == preset("baseline")
    with pytest.raises(ValueError, match="score"):
        ResidualConfig.from_dict({**legacy, "score": "sigmoid"}, lenient=True)


# ---------------------------------------------------------------- every precision
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=["64-true", "bf16-true"])
@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_trains_one_step_in_float64_and_bf16(name: str, dtype: torch.dtype) -> None:
    """``64-true`` and ``bf16-true`` cast the whole model, buffers included (mhc-lite's
    permutation matrices used to stay float32 and crash the einsum)."""
    torch.manual_seed(0)
    model = AttnResLM(tiny(preset(name), n_layers=layers_for(name))).to(dtype)
    idx = torch.randint(0, 64, (2, 16))
    logits = model(idx)
    assert logits.dtype == dtype
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), idx.flatten())
    assert torch.isfinite(loss)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}: {pname}"
