"""``attend`` picks the kernel or the reference as told, explains why when it cannot,
and a model gives the same loss and gradients either way (without a GPU the kernel runs in
Triton's interpreter; tests/conftest.py switches it on)."""

from __future__ import annotations

import pytest
import torch

from attnres_search.kernels import attend as dispatch
from attnres_search.kernels.reference import depth_attention
from attnres_search.kernels import runtime

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_kernel = pytest.mark.skipif(
    runtime.unavailable_reason(torch.device(DEVICE)) is not None,
    reason=f"the kernels cannot run here: {runtime.unavailable_reason(torch.device(DEVICE))}",
)


@pytest.fixture(autouse=True)
def clean_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    dispatch.set_backend(None)
    yield
    dispatch.set_backend(None)


@pytest.fixture
def kernel_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts calls into the fused kernel (still running it)."""
    from attnres_search.kernels import fused as K

    calls: list[int] = []
    real = K.fused_depth_attention

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(K, "fused_depth_attention", spy)
    return calls


@pytest.fixture
def path_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Counts, per path, the calls of every implementation a model's depth-attention can
    reach: the fused kernel and the two-phase kernels, or the PyTorch one-shot, two-phase and
    block-cache paths."""
    from attnres_search.kernels import attend as attend_module
    from attnres_search.kernels import two_phase
    from attnres_search.kernels.block_cache import BlockCache

    calls: dict[str, list[str]] = {"kernel": [], "reference": []}

    def spy(module, name: str, path: str) -> None:  # type: ignore[no-untyped-def]
        real = getattr(module, name)

        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls[path].append(name)
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    spy(attend_module, "depth_attention", "reference")
    spy(two_phase, "_phase1_torch", "reference")
    spy(two_phase, "_phase2_torch", "reference")
    spy(BlockCache, "open_block", "reference")
    spy(BlockCache, "layer_input", "reference")
    if runtime.unavailable_reason(torch.device(DEVICE)) is None:
        from attnres_search.kernels import fused, two_phase_triton

        spy(fused, "fused_depth_attention", "kernel")
        spy(two_phase_triton, "phase1", "kernel")
        spy(two_phase_triton, "phase2", "kernel")
    return calls


def inputs(n: int = 3, d: int = 64, device: str = "cpu", dtype: torch.dtype = torch.float32):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(n * d)
    blocks = torch.randn(n, 2, 3, d, generator=g).to(device, dtype)
    partial = torch.randn(2, 3, d, generator=g).to(device, dtype)
    query = (torch.randn(d, generator=g) / d**0.5).to(device)
    gain = (1 + 0.2 * torch.randn(d, generator=g)).to(device)
    return blocks, partial, query, gain


def reference(blocks, partial, query, gain, **kw):  # type: ignore[no-untyped-def]
    return depth_attention(blocks, query, gain, partial=partial, **kw)


@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
@pytest.mark.parametrize("heads", [1, 4])
def test_separate_partial_equals_concatenated_sources(score: str, heads: int) -> None:
    blocks, partial, query, gain = (t.double() for t in inputs())
    kw = dict(score=score, heads=heads, return_weights=True)
    out, w = depth_attention(blocks, query, gain, partial=partial, **kw)
    ref_out, ref_w = depth_attention(torch.cat([blocks, partial.unsqueeze(0)]), query, gain, **kw)
    torch.testing.assert_close(out, ref_out, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(w, ref_w, rtol=1e-13, atol=1e-13)


def test_backend_selection_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    assert dispatch.get_backend() == "auto"
    monkeypatch.setenv(dispatch.ENV_VAR, "Reference")
    assert dispatch.get_backend() == "reference"
    dispatch.set_backend("triton")
    assert dispatch.get_backend() == "triton"
    with dispatch.use_backend("auto"):
        assert dispatch.get_backend() == "auto"
    assert dispatch.get_backend() == "triton"
    dispatch.set_backend(None)
    assert dispatch.get_backend() == "reference"


def test_bad_backend_names_are_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="backend must be one of"):
        dispatch.set_backend("cuda")  # type: ignore[arg-type]
    monkeypatch.setenv(dispatch.ENV_VAR, "fast")
    with pytest.raises(ValueError, match="ATTNRES_KERNEL must be one of"):
        dispatch.attend(*inputs())


def test_auto_on_cpu_takes_the_reference(kernel_calls: list[int]) -> None:
    args = inputs()
    assert torch.equal(dispatch.attend(*args), reference(*args))
    assert kernel_calls == []


@needs_kernel
def test_forced_triton_runs_the_kernel(kernel_calls: list[int]) -> None:
    args = inputs(device=DEVICE)
    with dispatch.use_backend("triton"):
        out, weights = dispatch.attend(*args, return_weights=True)
    ref_out, ref_w = reference(*args, return_weights=True)
    assert kernel_calls == [1]
    assert torch.allclose(out, ref_out, atol=1e-5) and torch.allclose(weights, ref_w, atol=1e-6)


@needs_kernel
def test_auto_uses_the_kernel_for_supported_calls_only(kernel_calls: list[int]) -> None:
    if DEVICE != "cuda":
        pytest.skip("auto picks the kernel for CUDA tensors only")
    blocks, partial, query, gain = inputs(device="cuda")
    dispatch.attend(blocks, partial, query, gain)
    assert kernel_calls == [1]
    dispatch.attend(blocks, partial, torch.randn_like(partial), gain)  # input-dependent query
    dispatch.attend(blocks.double(), partial.double(), query, gain)
    assert kernel_calls == [1]


def test_forced_triton_explains_unsupported_calls() -> None:
    blocks, partial, query, gain = inputs()
    with dispatch.use_backend("triton"):
        with pytest.raises(RuntimeError, match="learned query vector"):
            dispatch.attend(blocks, partial, torch.randn_like(partial), gain)
        with pytest.raises(RuntimeError, match="float32, bfloat16 or float16"):
            dispatch.attend(blocks.double(), partial.double(), query, gain)
        with pytest.raises(RuntimeError, match="does not divide"):
            dispatch.attend(blocks, partial, query, gain, heads=5)


def test_forced_triton_on_cpu_without_interpreter_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("triton")
    from attnres_search.kernels import triton_base

    monkeypatch.setattr(triton_base, "INTERPRETED", False)
    with dispatch.use_backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        dispatch.attend(*inputs())


def _tiny_model(preset_name: str, **overrides: object):  # type: ignore[no-untyped-def]
    from attnres_search.model.config import ModelConfig, preset
    from attnres_search.model.decoder import AttnResLM

    torch.manual_seed(0)
    residual = preset(preset_name, **overrides)
    cfg = ModelConfig(vocab_size=256, n_layers=2, d_model=64, n_heads=4, seq_len=16, residual=residual)
    model = AttnResLM(cfg).to(DEVICE)
    with torch.no_grad():  # zero-init queries give uniform weights; make the mixing non-trivial
        model.residual.queries.normal_(0.0, 0.3)
        if hasattr(model.residual, "key_gains"):
            model.residual.key_gains.uniform_(0.7, 1.3)
    return model


def _loss_and_grads(model, idx: torch.Tensor):  # type: ignore[no-untyped-def]
    logits = model(idx)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx.roll(-1, 1).flatten())
    names, params = zip(*model.named_parameters())
    return loss.detach(), dict(zip(names, torch.autograd.grad(loss, params)))


@needs_kernel
@pytest.mark.parametrize(
    ("preset_name", "overrides"),
    [("block-s2", {}), ("full-sigmoid", {}), ("block-mh16", {"heads": 4}), ("block-nokeynorm", {"block_size": 2})],
)
def test_model_same_loss_and_gradients_with_kernel(
    preset_name: str, overrides: dict[str, object], path_calls: dict[str, list[str]]
) -> None:
    model = _tiny_model(preset_name, **overrides)
    idx = torch.randint(0, 256, (2, 16), device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(1))
    with dispatch.use_backend("reference"):
        ref_loss, ref_grads = _loss_and_grads(model, idx)
    assert path_calls["kernel"] == [] and path_calls["reference"] != []
    path_calls["reference"].clear()
    with dispatch.use_backend("triton"):
        loss, grads = _loss_and_grads(model, idx)
    # Every sublayer and the final mix took a kernel (one-shot fused or two-phase), none the reference.
    assert path_calls["reference"] == [] and path_calls["kernel"] != []
    assert torch.allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for name, ref in ref_grads.items():
        assert torch.allclose(grads[name], ref, rtol=1e-4, atol=1e-6), name


@needs_kernel
def test_model_records_the_same_mixing_weights_with_kernel() -> None:
    model = _tiny_model("block-s2")
    idx = torch.randint(0, 256, (2, 16), device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(2))
    with torch.no_grad():
        with dispatch.use_backend("reference"):
            model(idx, record=True)
            want = model.recorded["alpha"]
        with dispatch.use_backend("triton"):
            model(idx, record=True)
            got = model.recorded["alpha"]
    for a, b in zip(got, want):
        assert a == pytest.approx(b, abs=1e-5)


@needs_kernel
def test_compiled_model_traces_the_kernel_in_one_graph() -> None:
    """The model compiles with the kernel inside, without graph breaks (``aot_eager`` on the
    CPU, where Inductor cannot generate code for the interpreter's kernels)."""
    model = _tiny_model("block-s2")
    idx = torch.randint(0, 256, (2, 16), device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(3))
    with dispatch.use_backend("triton"):
        want = model(idx)
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="inductor" if DEVICE == "cuda" else "aot_eager", fullgraph=True)
        got = compiled(idx)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
