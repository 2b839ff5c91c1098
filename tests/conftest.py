"""Session-wide test setup."""

import os

import torch

# Triton decides between compiling kernels for a GPU and running them in its CPU interpreter
# when triton.language is first imported, and reads the switch again while running; so on a
# machine without a GPU it is switched on here, before any test module can import Triton, and
# the kernel tests run on CPU tensors. It concerns Triton kernels only, which nothing else runs
# without a GPU.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


# ---------------------------------------------------------------- tiny models and their layer I/O
import pytest  # noqa: E402
from typing import Any, Callable, Iterator  # noqa: E402


@pytest.fixture
def tiny_config() -> Callable[..., Any]:
    """``tiny_config(residual, n_layers=None, d_model=32)``: a model small enough for float64
    equation checks; by default the smallest depth at which the rule's block size (or block
    count) divides the sublayers, at least 2 transformer blocks."""
    from attnres_search.model.config import ModelConfig

    def make(residual: Any, n_layers: int | None = None, d_model: int = 32) -> ModelConfig:
        if n_layers is None:
            blocks = getattr(residual, "block_size", None) or getattr(residual, "num_blocks", None) or 2
            n_layers = max(2, blocks // 2) if residual.kind == "block" else 2
        return ModelConfig(vocab_size=64, n_layers=n_layers, d_model=d_model, n_heads=4, seq_len=16,
                           residual=residual)

    return make


@pytest.fixture
def layer_io() -> Iterator[Callable[..., Any]]:
    """``layer_io(model)`` -> (inputs, outputs, head_input): lists the model's forward hooks
    fill with each sublayer's input h_l and raw output f_l, and the final norm's input
    (what the head reads), so a test can check a rule against its equations. The hooks
    are removed when the test ends."""
    handles: list[Any] = []

    def attach(model: Any) -> tuple[list[Any], list[Any], list[Any]]:
        inputs: list[Any] = []
        outputs: list[Any] = []
        head: list[Any] = []

        def record(module: Any, args: tuple, out: Any) -> None:
            inputs.append(args[0])
            outputs.append(out)

        for layer in model.sublayers:
            handles.append(layer.register_forward_hook(record))
        handles.append(model.final_norm.register_forward_pre_hook(lambda module, args: head.append(args[0])))
        return inputs, outputs, head

    yield attach
    for handle in handles:
        handle.remove()


# ---------------------------------------------------------------- a WSGI app served on 127.0.0.1
@pytest.fixture
def serve_wsgi() -> Iterator[Callable[[Any], str]]:
    """``serve_wsgi(app)`` -> ``http://127.0.0.1:PORT``: the app served over real HTTP by a
    threaded wsgiref server (a browser loads a page's API calls in parallel) until the test ends."""
    import threading
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    servers: list[Any] = []

    def start(app: Any) -> str:
        server = make_server("127.0.0.1", 0, app, server_class=Server, handler_class=Quiet)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
