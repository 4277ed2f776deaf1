"""What every `tuneloop` command module shares: the consoles, the common options, the error wrapper
and params loading. Kept apart from tuneloop.cli so command modules elsewhere (tuneloop.monitor.cli)
import it without importing the CLI that registers them (no import cycle).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

# No emoji codes: a tag like `a:b:c` must print as typed, not as ":b:" turned into a picture.
err = Console(stderr=True, soft_wrap=True, emoji=False)
out = Console(soft_wrap=True, emoji=False)

ParamsOpt = Annotated[Path, typer.Option("--params", help="params file (the single source of truth).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override a param: section.key=value (repeatable).")]
# The prepared splits that train, pretrain and distill read (prepare writes them).
TRAIN_CSV, VAL_CSV = Path("data/prepared/train.csv"), Path("data/prepared/val.csv")
TrainCsvOpt = Annotated[Path, typer.Option("--train", help="labeled training rows (a CSV: text, label).")]
ValCsvOpt = Annotated[Path, typer.Option("--val", help="labeled validation rows (early stopping).")]
TextCol = Annotated[str, typer.Option("--text-col", help="column holding the text.")]
LabelCol = Annotated[str, typer.Option("--label-col", help="column holding the label.")]

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(func: F) -> F:
    """Turn a TuneloopError (or an OS error such as a full disk) into one message and exit 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from tuneloop.errors import TuneloopError

        try:
            return func(*args, **kwargs)
        except TuneloopError as exc:
            # escaped: a message quoting the user's input (`--set data.labels=[a, b`) is not markup
            err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            err.print(f"[bold red]error:[/] {escape(where + str(exc.strerror or exc))}", highlight=False)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def cli_params(path: Path, overrides: list[str] | None) -> Any:
    """The params a command runs with: `--params` FILE with its `--set` overrides (tuneloop.config.Params)."""
    from tuneloop.config import load_params

    return load_params(path, overrides or [])
