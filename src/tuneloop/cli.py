"""The `tuneloop` command line.

Start-up stays light (typer + rich only): every stage module, and with it pandas, Great
Expectations, DVC and torch, is imported inside the command that needs it, so `tuneloop --help`
answers fast. Errors a user can fix (TuneloopError) print as one message without a traceback.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

app = typer.Typer(help="tuneloop: validate, version, fine-tune, gate, serve and monitor text classifiers.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Demo data, import and validation.", no_args_is_help=True)
app.add_typer(data_app, name="data")

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

ParamsOpt = Annotated[Path, typer.Option("--params", help="params file (the single source of truth).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override a param: section.key=value (repeatable).")]
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
            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:
            err.print(f"[bold red]error:[/] {exc.filename or ''}: {exc.strerror or exc}", highlight=False)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _params(path: Path, overrides: list[str] | None) -> Any:
    from tuneloop.config import load_params

    return load_params(path, overrides or [])


@app.callback()
def root(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging.")] = False) -> None:
    """Configure logging once, at the entry point."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    # Libraries that chat at INFO (GX even pins its own loggers to INFO on import): warnings only.
    for handler in logging.getLogger().handlers:
        handler.addFilter(_only_warnings_from(NOISY_LOGGERS))


NOISY_LOGGERS = ("great_expectations", "dvc", "urllib3", "filelock", "httpx")


def _only_warnings_from(prefixes: tuple[str, ...]) -> logging.Filter:
    quiet = logging.Filter()
    quiet.filter = lambda r: r.levelno >= logging.WARNING or not r.name.startswith(prefixes)  # type: ignore[method-assign]
    return quiet


@data_app.command("demo")
@user_errors
def data_demo(
    out_path: Annotated[Path, typer.Option("--out", help="CSV file to write.")],
    rows: Annotated[int, typer.Option(min=1, max=1_000_000, help="number of messages.")] = 2000,
    seed: Annotated[int, typer.Option(min=0, help="same seed, byte-identical file.")] = 42,
    drift: Annotated[str, typer.Option(help="none | vocabulary | label-mix | length.")] = "none",
) -> None:
    """Write the deterministic demo corpus of customer-support messages."""
    from tuneloop.demo import DRIFTS, write_demo
    from tuneloop.errors import TuneloopError

    if drift not in DRIFTS:
        raise TuneloopError(f"--drift {drift!r}: choose one of {', '.join(DRIFTS)}.")
    path = write_demo(out_path, rows=rows, seed=seed, drift=drift)  # type: ignore[arg-type]
    out.print(f"wrote {rows} demo rows (seed {seed}, drift {drift}) to {path}")


@data_app.command("import")
@user_errors
def data_import(
    path: Annotated[Path, typer.Argument(help="CSV, TSV, Parquet or JSONL file with text and labels.")],
    text_col: TextCol = "text",
    label_col: LabelCol = "label",
    raw: Annotated[Path | None, typer.Option("--raw", help="where to write (default: data.raw_path).")] = None,
    no_dvc: Annotated[bool, typer.Option("--no-dvc", help="write the file without `dvc add`.")] = False,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Import a labeled file as the canonical raw corpus and track it with DVC."""
    from tuneloop.ingest import import_file

    cfg = _params(params, set_)
    written = import_file(path, raw or Path(cfg.data.raw_path), text_col=text_col,
                          label_col=label_col, track=not no_dvc)
    out.print(f"imported {path} -> {written}" + ("" if no_dvc else " (tracked by data.dvc; `dvc push` to share)"))


@data_app.command("validate")
@user_errors
def data_validate(
    path: Annotated[Path, typer.Argument(help="the file to validate.")],
    report: Annotated[Path | None, typer.Option("--report", help="folder for summary.json, report.md, metrics.json.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="folder for valid.csv and quarantine.csv.")] = None,
    text_col: TextCol = "text",
    label_col: LabelCol = "label",
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Run the Great Expectations suite; fail or quarantine per check as params.yaml says."""
    from tuneloop.validate import validate_file

    cfg = _params(params, set_)
    result = validate_file(path, cfg.validate_, cfg.data.labels, text_col=text_col,
                           label_col=label_col, out_dir=out_dir, report_dir=report)
    summary = result.summary()
    out.print(f"[green]validation passed[/]: {summary['rows_in']} rows in, {summary['rows_kept']} kept, "
              f"{summary['rows_quarantined']} quarantined" + (f"; report in {report}" if report else ""))


@app.command("prepare")
@user_errors
def prepare_cmd(
    input_path: Annotated[Path, typer.Option("--input", help="validated rows.")] = Path("data/validated/valid.csv"),
    out_dir: Annotated[Path, typer.Option("--out", help="folder for the splits.")] = Path("data/prepared"),
    metrics: Annotated[Path, typer.Option("--metrics", help="row counts as JSON.")] = Path("reports/prepare.json"),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Normalise, dedupe and split into train/val/test (the DVC `prepare` stage)."""
    from tuneloop.prepare import run

    counts = run(_params(params, set_), input_path, out_dir, metrics)
    out.print(f"prepared {counts} in {out_dir}")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    app(args=argv if argv is not None else sys.argv[1:], prog_name="tuneloop")
