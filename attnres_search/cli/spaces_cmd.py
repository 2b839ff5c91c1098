"""``attnres-search spaces``: the built-in search spaces, and what a space will run."""

from __future__ import annotations

import click


@click.group()
def spaces() -> None:
    """List the built-in search spaces or show what one runs."""


@spaces.command(name="list")
def list_spaces() -> None:
    """Built-in spaces (`study start NAME`); any .yaml file path works as well."""
    from rich.table import Table

    from attnres_search.cli.terminal import stdout_console
    from attnres_search.study.space_file import builtin_names, load_space

    table = Table(title="Built-in search spaces", title_justify="left")
    for col in ("name", "kind", "sampler", "runs", "description"):
        table.add_column(col, justify="right" if col == "runs" else "left")
    for name in builtin_names():
        space = load_space(name)
        runs = len(space.cells()) if space.is_grid else space.n_trials
        table.add_row(name, space.kind, space.sampler, str(runs), space.description)
    stdout_console().print(table)


@spaces.command()
@click.argument("space")
def show(space: str) -> None:
    """The YAML of SPACE (name or path) and every run it makes: shape, tokens and FLOPs.

    Every run goes through the same checks as `study start` (and `train`), so a space that
    shows here without an error starts without one."""
    from rich.syntax import Syntax
    from rich.table import Table

    from attnres_search.cli.terminal import stdout_console
    from attnres_search.model.flops import flops_per_token
    from attnres_search.study.space_checks import check_space_runs
    from attnres_search.study.space_file import load_space, space_text
    from attnres_search.study.storage import resolve_url, runs_dir

    loaded = load_space(space)
    check_space_runs(loaded, runs_dir(resolve_url(None)) / loaded.name)  # where `study start` would write
    text, _, where = space_text(space)
    console = stdout_console()
    console.print(f"[bold]{loaded.name}[/] ({where}): {loaded.kind}, {loaded.sampler} sampler")
    console.print(Syntax(text, "yaml", background_color="default"))
    if not loaded.is_grid:
        console.print(f"{loaded.n_trials} sampled trials")
        return
    cells = [c for c in loaded.cells() if c["seed"] == loaded.seeds[0]]
    table = Table(title=f"{len(cells)} cells x {len(loaded.seeds)} seed(s) = {len(loaded.cells())} runs",
                  title_justify="left")
    names = [k for k in cells[0] if k != "seed"]
    for col in (*names, "L_b", "d_model", "heads", "tokens", "train FLOPs/run"):
        table.add_column(col, justify="left" if col in names else "right")
    for cell in cells:
        run = loaded.run_config(cell)
        tokens = run.tokens or 0
        flops = flops_per_token(run.model)["train"] * tokens
        table.add_row(*(str(cell[k]) for k in names), str(run.model.n_layers), str(run.model.d_model),
                      str(run.model.n_heads), f"{tokens:,}", f"{flops:.3g}")
    console.print(table)
