"""`tuneloop monitor run|reference|ui` and `tuneloop simulate` (registered by tuneloop.cli).

Heavy imports (pandas, torch, evidently) stay inside the commands, so `tuneloop --help` stays fast.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from tuneloop.cli_common import ParamsOpt, SetOpt, cli_params, out, user_errors

monitor_app: typer.Typer = typer.Typer(help="Monitoring: drift signals, label-free estimates, verdicts, Evidently UI.")


@monitor_app.command("run")
@user_errors
def run_cmd(
    window: Annotated[
        int | None, typer.Option("--window", min=1, help="newest N predictions (default: monitor.window).")
    ] = None,
    since: Annotated[
        datetime | None, typer.Option("--since", help="every prediction since T (ISO time, UTC if naive).")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="model tag (default: the champion).")] = None,
    db: Annotated[
        str | None, typer.Option("--db", help="prediction log URL (default: TUNELOOP_DB_URL or sqlite).")
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Judge a window of the prediction log against the model's reference; writes the verdict."""
    from tuneloop.monitor.run import run_monitoring
    from tuneloop.monitor.verdict import summary

    cfg = cli_params(params, set_).monitor
    verdict = run_monitoring(cfg, model_tag=model, db_url=db, last=window, since=since)
    out.print(summary(verdict), highlight=False)
    out.print(f"verdict: {Path(cfg.state_dir) / verdict.window.model_tag.split(':')[0] / 'verdict.json'}")


@monitor_app.command("reference")
@user_errors
def reference_cmd(
    model_dir: Annotated[Path, typer.Argument(help="model dir written by `tuneloop train`.")],
    data: Annotated[list[Path], typer.Option("--data", help="labeled held-out file(s): val and test splits.")],
    out_path: Annotated[Path, typer.Option("--out", help="Parquet file to write.")] = Path("reports/reference.parquet"),
    corpus: Annotated[
        Path | None,
        typer.Option(
            "--corpus",
            help="the raw corpus the --data rows were prepared from (data.raw_path): the predicted-label test then "
            "expects its label mix. Leave out for held-out rows of other origin.",
        ),
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Build the monitoring reference of a model (register it with `tuneloop models register --reference`)."""
    import pandas as pd

    from tuneloop.monitor.label_mix import corpus_label_counts
    from tuneloop.monitor.reference import build_reference, write_reference
    from tuneloop.tabular import read_labeled

    cfg = cli_params(params, set_)
    frame = pd.concat([read_labeled(p) for p in data], ignore_index=True)
    reference = build_reference(
        model_dir,
        frame,
        backend=cfg.serve.backend,
        recheck_margin=cfg.serve.int8_recheck_margin,
        corpus_labels=corpus_label_counts(corpus) if corpus else None,
    )
    write_reference(reference, out_path)
    settings = reference.attrs["tuneloop_reference"]
    out.print(
        f"wrote {out_path}: {settings['rows']} rows, accuracy {settings['accuracy']:.4f}, {settings['calibration']}"
    )


@monitor_app.command("ui")
@user_errors
def ui_cmd(
    host: Annotated[str, typer.Option(help="interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="port.")] = 8000,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Open Evidently's UI on the monitoring workspace (a project per task, panels over time)."""
    import os
    import sys

    from tuneloop import procs
    from tuneloop.monitor.workspace import check_readable

    workspace = Path(cli_params(params, None).monitor.workspace)
    workspace.mkdir(parents=True, exist_ok=True)
    check_readable(workspace)  # a damaged project file: one message here, not a UI that fails page by page
    out.print(f"Evidently UI on http://{host}:{port} (workspace {workspace}); Ctrl-C stops it")
    command = [
        sys.executable,
        "-m",
        "evidently.cli",
        "ui",
        "--workspace",
        str(workspace),
        "--host",
        host,
        "--port",
        str(port),
    ]
    procs.require_free_port(host, port, "tuneloop monitor ui")
    # Supervised as serve and dashboard are: SIGTERM/SIGINT stop the whole tree, no UI server is orphaned.
    raise typer.Exit(procs.run_tree(command, dict(os.environ), "tuneloop monitor ui"))


@user_errors
def simulate_cmd(
    url: Annotated[str, typer.Option("--url", help="the running service, e.g. http://127.0.0.1:3000.")],
    rows: Annotated[int, typer.Option("--rows", min=1, help="texts to send.")] = 1000,
    drift: Annotated[
        str, typer.Option("--drift", help="none | vocabulary | label-mix | length | new-intents.")
    ] = "none",
    share: Annotated[float, typer.Option("--share", min=0, max=1, help="share of the rows that are drifted.")] = 0.2,
    feedback: Annotated[float, typer.Option("--feedback", min=0, max=1, help="share of rows sent a true label.")] = 0.0,
    file: Annotated[Path | None, typer.Option("--file", help="replay this labeled file instead of demo texts.")] = None,
    seed: Annotated[int, typer.Option(min=0, help="same seed, same traffic.")] = 0,
    new_labels_out: Annotated[
        Path | None,
        typer.Option("--new-labels-out", help="CSV for feedback labels the model does not know (feedback import)."),
    ] = None,
) -> None:
    """Replay demo texts (or a file), a share of them drifted, against a running service, with feedback."""
    import os

    from tuneloop.monitor.simulate import drifted_rows, replay
    from tuneloop.tabular import read_labeled

    frame = read_labeled(file).head(rows) if file else drifted_rows(drift, rows, share, seed)
    key = os.environ.get("TUNELOOP_API_KEY")
    sent = replay(url, frame, feedback=feedback, api_key=key, seed=seed, new_labels_out=new_labels_out)
    unknown = sent["feedback_unknown_label"]
    where = f"written to {new_labels_out} (tuneloop feedback import {new_labels_out} --new-labels)"
    out.print(
        f"sent {sent['predictions']} predictions ({drift}, share {share:.0%}) and {sent['feedback']} feedback labels"
        + (f"; {unknown} labels unknown to the model {where if new_labels_out else 'were not sent'}" if unknown else "")
    )
