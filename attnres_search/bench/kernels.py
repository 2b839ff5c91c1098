"""``attnres-search bench kernels``: the fused depth-attention kernel against the PyTorch
reference, eager and ``torch.compile``-d, forward and forward+backward, side by side.

The op is memory-bound, so the figure of merit is achieved bandwidth: bytes that must move
(each source read once, the output written once; backward also reads the output gradient and
the saved output and writes a gradient per source) over the measured time, compared with a
device-to-device copy measured in the same run. Timings use CUDA events after a warm-up and
report the median of the repeats.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import click

from attnres_search.bench import command_console

# (tokens, width, sources): tokens = batch x seq flattened; sources = completed blocks + partial.
SHAPES: tuple[tuple[int, int, int], ...] = (
    (8192, 512, 2),
    (16384, 1024, 5),
    (32768, 1024, 9),
    (65536, 1024, 17),
    (16384, 2048, 9),
    (8192, 4096, 17),
    (65536, 4096, 3),
)
QUICK_SHAPES: tuple[tuple[int, int, int], ...] = (
    (8192, 512, 2), (16384, 1024, 5), (65536, 1024, 17), (8192, 4096, 17),
)  # fmt: skip
CPU_SHAPES: tuple[tuple[int, int, int], ...] = ((1024, 256, 3), (2048, 512, 5))
TWO_PHASE_LAYERS = 4
"""Layers per block S in the two-phase rows (the paper's block-s4 layout)."""


@dataclass
class TwoPhaseRow:
    """One block of ``S`` layers over ``N = sources - 1`` completed blocks, forward + backward:
    the two-phase schedule against ``S`` one-shot calls (eager and compiled)."""

    shape: tuple[int, int, int]
    layers: int
    two_phase_ms: float
    one_shot_ms: float
    compile_ms: float | None
    max_rel_err: float


@dataclass
class Row:
    """One shape and pass: median milliseconds per implementation (``None`` = not run)."""

    shape: tuple[int, int, int]
    phase: str
    bytes_moved: int
    kernel_ms: float | None
    eager_ms: float
    compile_ms: float | None
    max_rel_err: float | None


def _reference(blocks, partial, query, gain):  # type: ignore[no-untyped-def]
    """What the reference path of ``dispatch.attend`` runs: concatenate, then the PyTorch op."""
    import torch

    from attnres_search.kernels.reference import depth_attention

    return depth_attention(torch.cat([blocks, partial.unsqueeze(0)]), query, gain)


def _median_ms(fn: Callable[[], object], warmup: int, repeats: int, cuda: bool) -> float:
    import torch

    for _ in range(warmup):
        fn()
    if not cuda:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events)


def copy_bandwidth(warmup: int, repeats: int, n_bytes: int = 2 << 30) -> float:
    """Device-to-device copy bandwidth (bytes read + written per second) of a large clone."""
    import torch

    x = torch.empty(n_bytes // 2, dtype=torch.bfloat16, device="cuda").normal_()
    ms = _median_ms(x.clone, warmup, repeats, cuda=True)
    return 2 * n_bytes / (ms * 1e-3)


def _bench_shape(
    shape: tuple[int, int, int], dtype_name: str, warmup: int, repeats: int, cuda: bool, compile_ref: bool
) -> list[Row]:
    import torch

    tokens, d, n = shape
    device = "cuda" if cuda else "cpu"
    dtype = getattr(torch, dtype_name)
    elem = torch.finfo(dtype).bits // 8
    gen = torch.Generator(device=device).manual_seed(0)
    blocks = torch.randn(n - 1, tokens, d, device=device, dtype=dtype, generator=gen)
    partial = torch.randn(tokens, d, device=device, dtype=dtype, generator=gen)
    query = torch.randn(d, device=device, generator=gen) / d**0.5
    gain = 1 + 0.1 * torch.randn(d, device=device, generator=gen)
    grad_out = torch.randn(tokens, d, device=device, dtype=dtype, generator=gen)
    leaves = [t.detach().requires_grad_() for t in (blocks, partial, query, gain)]

    impls: dict[str, Callable] = {"eager": _reference}
    if cuda:
        from attnres_search.kernels.fused import fused_depth_attention

        impls["kernel"] = fused_depth_attention
    if compile_ref:
        torch._dynamo.reset()
        impls["compile"] = torch.compile(_reference, dynamic=False)

    fwd_ms: dict[str, float] = {}
    step_ms: dict[str, float] = {}
    for name, fn in impls.items():
        with torch.no_grad():
            fwd_ms[name] = _median_ms(lambda fn=fn: fn(blocks, partial, query, gain), warmup, repeats, cuda)

        def step(fn: Callable = fn) -> None:
            out = fn(*leaves)
            torch.autograd.grad(out, leaves, grad_out)

        step_ms[name] = _median_ms(step, warmup, repeats, cuda)

    err = None
    if "kernel" in impls:
        with torch.no_grad():
            ref = _reference(blocks.float(), partial.float(), query, gain)
            got = impls["kernel"](blocks, partial, query, gain).float()
        err = ((got - ref).abs().max() / ref.abs().max()).item()
    src = n * tokens * d * elem
    io = tokens * d * elem
    fwd_bytes = src + io  # read every source once, write the output
    bwd_bytes = src + 2 * io + src  # read sources, grad_out and the saved output; write d(sources)
    rows = []
    for phase, times, nbytes in (("fwd", fwd_ms, fwd_bytes), ("fwd+bwd", step_ms, fwd_bytes + bwd_bytes)):
        rows.append(
            Row(shape, phase, nbytes, times.get("kernel"), times["eager"], times.get("compile"), err if phase == "fwd" else None)
        )
    del blocks, partial, grad_out, leaves, impls
    if cuda:
        torch.cuda.empty_cache()
    return rows


def _bench_two_phase(
    shape: tuple[int, int, int], dtype_name: str, warmup: int, repeats: int, cuda: bool, compile_ref: bool,
    layers: int = TWO_PHASE_LAYERS,
) -> TwoPhaseRow:  # fmt: skip
    """Time one block's depth-attention for training: ``phase1`` + ``S x phase2`` against
    ``S`` one-shot :func:`attend` calls (kernel on CUDA, PyTorch on CPU, same backend rule as
    the model) and against those one-shot calls ``torch.compile``-d on the reference path."""
    import torch

    from attnres_search.kernels.attend import attend
    from attnres_search.kernels.backend import use_backend
    from attnres_search.kernels.two_phase import phase1, phase2

    tokens, d, n = shape
    device = "cuda" if cuda else "cpu"
    dtype = getattr(torch, dtype_name)
    gen = torch.Generator(device=device).manual_seed(0)
    blocks = torch.randn(max(n - 1, 1), tokens, d, device=device, dtype=dtype, generator=gen).requires_grad_()
    queries = (torch.randn(layers, d, device=device, generator=gen) / d**0.5).requires_grad_()
    gains = (1 + 0.1 * torch.randn(layers, d, device=device, generator=gen)).requires_grad_()
    partials = [torch.randn(tokens, d, device=device, dtype=dtype, generator=gen).requires_grad_() for _ in range(layers - 1)]
    grads_out = [torch.randn(tokens, d, device=device, dtype=dtype, generator=gen) for _ in range(layers)]
    leaves = [blocks, queries, gains, *partials]

    def two_phase() -> list:  # type: ignore[type-arg]
        p1 = phase1(blocks, queries, gains)
        return [phase2(p1, j, None if j == 0 else partials[j - 1], queries[j], gains[j]) for j in range(layers)]

    def one_shot() -> list:  # type: ignore[type-arg]
        return [attend(blocks, None if j == 0 else partials[j - 1], queries[j], gains[j]) for j in range(layers)]

    def step(fn) -> None:  # type: ignore[no-untyped-def]
        torch.autograd.grad(fn(), leaves, grads_out)

    backend = "triton" if cuda else "reference"
    with use_backend(backend):  # type: ignore[arg-type]
        two_ms = _median_ms(lambda: step(two_phase), warmup, repeats, cuda)
        one_ms = _median_ms(lambda: step(one_shot), warmup, repeats, cuda)
        with torch.no_grad():
            got, want = two_phase(), one_shot()
        err = max(((a.float() - b.float()).abs().max() / b.float().abs().max()).item() for a, b in zip(got, want))
    compile_ms = None
    if compile_ref:
        torch._dynamo.reset()
        compiled = torch.compile(one_shot, dynamic=False)
        with use_backend("reference"):
            compile_ms = _median_ms(lambda: step(compiled), warmup, repeats, cuda)
    return TwoPhaseRow(shape, layers, two_ms, one_ms, compile_ms, err)


def _render_two_phase(rows: list[TwoPhaseRow], dtype_name: str, device_name: str, kernel: bool) -> None:
    from rich.table import Table

    console = command_console()
    console.width = max(console.width, 130)
    path = "Triton kernels" if kernel else "PyTorch"
    table = Table(title=f"two-phase training step of one block ({path}), {dtype_name} sources, on {device_name}")
    for col in ("tokens", "d", "N", "S", "two-phase ms", "one-shot x S ms", "compiled ms", "vs one-shot", "vs compiled", "err"):
        table.add_column(col, justify="right")
    for r in rows:
        t, d, n = r.shape
        table.add_row(
            str(t), str(d), str(max(n - 1, 1)), str(r.layers), _ms(r.two_phase_ms), _ms(r.one_shot_ms),
            _ms(r.compile_ms), _ratio(r.one_shot_ms, r.two_phase_ms), _ratio(r.compile_ms, r.two_phase_ms),
            f"{r.max_rel_err:.1e}",
        )  # fmt: skip
    console.print(table)
    console.print(
        "Forward + backward of the depth-attention of all S layers of one block over N completed "
        "blocks (S - 1 partial sums). 'vs one-shot' and 'vs compiled' are the two-phase "
        "schedule's speedups over S one-shot calls, eager and torch.compile-d (reference path)."
    )


def _ratio(num: float | None, den: float | None) -> str:
    return "-" if num is None or den is None else f"{num / den:.2f}x"


def _render(rows: list[Row], copy_bw: float | None, dtype_name: str, device_name: str) -> None:
    from rich.table import Table

    console = command_console()
    console.width = max(console.width, 130)  # a pipe reports 80 columns: keep rows on one line
    has_kernel = any(r.kernel_ms is not None for r in rows)
    title = f"depth-attention, {dtype_name} sources, softmax + key RMSNorm, on {device_name}"
    if copy_bw is not None:
        title += f" (device copy: {copy_bw / 1e9:.0f} GB/s)"
    table = Table(title=title)
    cols = ["tokens", "d", "n", "pass"]
    cols += ["kernel ms", "eager ms", "compile ms", "kernel GB/s", "% of copy", "vs eager", "vs compile", "fwd err"] if has_kernel else ["eager ms", "compile ms", "eager GB/s", "compile GB/s"]
    for col in cols:
        table.add_column(col, justify="right")
    for r in rows:
        t, d, n = r.shape
        cells = [str(t), str(d), str(n), r.phase]
        gbs = {k: None if ms is None else r.bytes_moved / (ms * 1e-3) for k, ms in
               (("kernel", r.kernel_ms), ("eager", r.eager_ms), ("compile", r.compile_ms))}  # fmt: skip
        if has_kernel:
            cells += [
                _ms(r.kernel_ms), _ms(r.eager_ms), _ms(r.compile_ms), _gbs(gbs["kernel"]),
                "-" if copy_bw is None or gbs["kernel"] is None else f"{100 * gbs['kernel'] / copy_bw:.0f}%",
                _ratio(r.eager_ms, r.kernel_ms), _ratio(r.compile_ms, r.kernel_ms),
                "" if r.max_rel_err is None else f"{r.max_rel_err:.1e}",
            ]  # fmt: skip
        else:
            cells += [_ms(r.eager_ms), _ms(r.compile_ms), _gbs(gbs["eager"]), _gbs(gbs["compile"])]
        table.add_row(*cells)
    console.print(table)
    console.print(
        "GB/s counts the bytes that must move: forward reads n·T·d and writes T·d; backward reads "
        "n·T·d + 2·T·d (sources, output gradient, saved output) and writes n·T·d. 'vs eager' and "
        "'vs compile' are the kernel's speedups (their time over the kernel's). 'fwd err' is the "
        "kernel's max error relative to the float32 reference."
    )


def _ms(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:.3f}"


def _gbs(bytes_per_s: float | None) -> str:
    return "-" if bytes_per_s is None else f"{bytes_per_s / 1e9:.0f}"


@click.command()
@click.option("--quick", is_flag=True, help="Three shapes instead of the full table.")
@click.option("--dtype", "dtype_name", type=click.Choice(["bfloat16", "float16", "float32"]), default="bfloat16",
              show_default=True, help="Storage dtype of the sources (math is float32 regardless).")  # fmt: skip
@click.option("--warmup", default=5, type=click.IntRange(min=0), show_default=True, help="Untimed runs before timing.")
@click.option("--repeats", default=20, type=click.IntRange(min=1), show_default=True,
              help="Timed runs; the median is reported.")  # fmt: skip
@click.option("--no-compile", is_flag=True, help="Skip the torch.compile column (compiling takes a while).")
@click.option("--no-two-phase", is_flag=True, help="Skip the two-phase training table.")
@click.option("--shape", "shapes_opt", multiple=True, metavar="TOKENS,D,SOURCES",
              help="Time these shapes instead of the built-in list (repeatable), e.g. 8192,512,2.")  # fmt: skip
def command(
    quick: bool, dtype_name: str, warmup: int, repeats: int, no_compile: bool, no_two_phase: bool,
    shapes_opt: tuple[str, ...],
) -> None:  # fmt: skip
    """Time the fused kernel vs the PyTorch reference (eager and torch.compile)."""
    import warnings

    import torch

    from attnres_search.kernels.runtime import TRITON_INSTALLED

    # Inductor explains, once per graph, why it split a reduction: noise in a timing table.
    warnings.filterwarnings("ignore", message=r"\s*Online softmax is disabled")

    cuda = torch.cuda.is_available()
    if cuda and not TRITON_INSTALLED:
        raise click.ClickException("a GPU is here but triton is not installed: pip install triton")
    if cuda:
        shapes = QUICK_SHAPES if quick else SHAPES
        device_name = torch.cuda.get_device_name()
        copy_bw = copy_bandwidth(warmup, repeats)
    else:
        click.echo("No CUDA GPU: the Triton kernels need one. Timing the PyTorch reference paths on small CPU shapes.")
        shapes = CPU_SHAPES[:1] if quick else CPU_SHAPES
        device_name, copy_bw = "CPU", None
    if shapes_opt:
        shapes = tuple(_parse_shape(text) for text in shapes_opt)
    rows: list[Row] = []
    for k, shape in enumerate(shapes, 1):
        new_rows = _bench_shape(shape, dtype_name, warmup, repeats, cuda, compile_ref=not no_compile)
        summary = "; ".join(
            f"{r.phase} kernel {_ms(r.kernel_ms)} eager {_ms(r.eager_ms)} compile {_ms(r.compile_ms)} ms" for r in new_rows
        )
        click.echo(f"[{k}/{len(shapes)}] tokens={shape[0]} d={shape[1]} sources={shape[2]}: {summary}", err=True)
        rows += new_rows
    _render(rows, copy_bw, dtype_name, device_name)
    if no_two_phase:
        return
    two_phase_rows = []
    for k, shape in enumerate(shapes, 1):
        row = _bench_two_phase(shape, dtype_name, warmup, repeats, cuda, compile_ref=not no_compile)
        click.echo(f"[{k}/{len(shapes)}] two-phase tokens={shape[0]} d={shape[1]} sources={shape[2]}: "
                   f"{_ms(row.two_phase_ms)} vs one-shot {_ms(row.one_shot_ms)} ms", err=True)  # fmt: skip
        two_phase_rows.append(row)
    _render_two_phase(two_phase_rows, dtype_name, device_name, kernel=cuda)


def _parse_shape(text: str) -> tuple[int, int, int]:
    from attnres_search.errors import BadInput

    try:
        tokens, d, n = (int(part) for part in text.split(","))
    except ValueError:
        raise BadInput(f"--shape takes TOKENS,D,SOURCES (three integers), got {text!r}") from None
    if min(tokens, d, n) < 1:
        raise BadInput(f"--shape values must be positive, got {text!r}")
    return tokens, d, n
