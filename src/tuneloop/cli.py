"""The `tuneloop` command line.

Start-up stays light (typer + rich only): every stage module, and with it pandas, Great
Expectations, DVC and torch, is imported inside the command that needs it, so `tuneloop --help`
answers fast. Errors a user can fix (TuneloopError) print as one message without a traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from tuneloop.cli_common import (
    TRAIN_CSV,
    VAL_CSV,
    LabelCol,
    ParamsOpt,
    SetOpt,
    TextCol,
    TrainCsvOpt,
    ValCsvOpt,
    cli_params,
    err,
    out,
    user_errors,
)

app = typer.Typer(
    help="tuneloop: validate, version, fine-tune, gate, serve and monitor text classifiers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Demo data, import and validation.", no_args_is_help=True)
app.add_typer(data_app, name="data")
models_app = typer.Typer(help="The model registry (BentoML's model store).", no_args_is_help=True)
app.add_typer(models_app, name="models")
feedback_app = typer.Typer(
    help="Labels for logged predictions: what to label, and labels from a file.", no_args_is_help=True
)
app.add_typer(feedback_app, name="feedback")
pipeline_app = typer.Typer(help="Prefect flows.", no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")


@app.callback()
def root(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging.")] = False) -> None:
    """Configure logging once, at the entry point."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Libraries that chat at INFO (GX even pins its own loggers to INFO on import): warnings only.
    for handler in logging.getLogger().handlers:
        handler.addFilter(_only_warnings_from(NOISY_LOGGERS))


NOISY_LOGGERS = ("great_expectations", "dvc", "urllib3", "filelock", "httpx", "aiobotocore", "botocore", "s3fs")


class _OnlyWarningsFrom(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith(self.prefixes)


def _only_warnings_from(prefixes: tuple[str, ...]) -> logging.Filter:
    return _OnlyWarningsFrom(prefixes)


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

    cfg = cli_params(params, set_)
    written = import_file(
        path, raw or Path(cfg.data.raw_path), text_col=text_col, label_col=label_col, track=not no_dvc
    )
    out.print(f"imported {path} -> {written}" + ("" if no_dvc else " (tracked by data.dvc; `dvc push` to share)"))


@data_app.command("validate")
@user_errors
def data_validate(
    path: Annotated[Path, typer.Argument(help="the file to validate.")],
    report: Annotated[
        Path | None, typer.Option("--report", help="folder for summary.json, report.md, metrics.json.")
    ] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="folder for valid.csv and quarantine.csv.")] = None,
    text_col: TextCol = "text",
    label_col: LabelCol = "label",
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Run the Great Expectations suite; fail or quarantine per check as params.yaml says."""
    from tuneloop.validate import validate_file

    cfg = cli_params(params, set_)
    result = validate_file(
        path,
        cfg.validate_,
        cfg.data.labels,
        text_col=text_col,
        label_col=label_col,
        out_dir=out_dir,
        report_dir=report,
        base_model=cfg.train.base_model,
        vocab=cfg.vocab,
    )
    summary = result.summary()
    out.print(
        f"[green]validation passed[/]: {summary['rows_in']} rows in, {summary['rows_kept']} kept, "
        f"{summary['rows_quarantined']} quarantined" + (f"; report in {report}" if report else "")
    )
    coverage = result.checks.get("tokenizer_coverage")
    if coverage is not None and not coverage.success:  # policy warn: the run goes on, the user must know
        from rich.markup import escape

        from tuneloop.validate import CHECKS

        err.print(
            f"[bold yellow]warning:[/] tokenizer_coverage: {escape(coverage.note)}.\n"
            f"  Fix: {CHECKS['tokenizer_coverage'][2]}.",
            highlight=False,
            soft_wrap=True,
        )


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

    counts = run(cli_params(params, set_), input_path, out_dir, metrics)
    out.print(f"prepared {counts} in {out_dir}")


@app.command("train")
@user_errors
def train_cmd(
    train_path: TrainCsvOpt = TRAIN_CSV,
    val_path: ValCsvOpt = VAL_CSV,
    out_dir: Annotated[Path, typer.Option("--out", help="model dir to write.")] = Path("models/candidate"),
    base: Annotated[
        str | None, typer.Option("--base", help="'minilm', a folder or a hub id (train.base_model).")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue from the newest checkpoint (a crash).")] = False,
    checkpoints: Annotated[Path | None, typer.Option("--checkpoints", help="default: OUT.checkpoints.")] = None,
    live_dir: Annotated[str, typer.Option("--live-dir", help="dvclive folder ('' = off).")] = "dvclive",
    max_samples: Annotated[int, typer.Option("--max-samples", min=0, help="a seeded sample of each file.")] = 0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="smoke run: 32 rows, 2 steps, all written.")] = False,
    pretrained: Annotated[Path | None, typer.Option("--pretrained", help="start from it if it holds a model.")] = None,
    nproc: Annotated[int | None, typer.Option("--nproc", min=0, help="DDP processes (train.nproc).")] = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Fine-tune a sequence classifier (the DVC `train` stage)."""
    from tuneloop.train import is_main_process, preflight, processes_to_launch, starting_point, train, under_launcher

    cfg, samples, steps = cli_params(params, set_), 32 if dry_run else max_samples, 2 if dry_run else -1
    base = base or starting_point(cfg, pretrained)
    processes = processes_to_launch(cfg.train.nproc if nproc is None else nproc)
    if processes > 1 and not under_launcher():
        preflight(cfg, train_path, val_path, base, processes)
        options = {"--train": train_path, "--val": val_path, "--out": out_dir, "--base": base, "--live-dir": live_dir}
        options |= {"--max-samples": samples, "--params": params, "--checkpoints": checkpoints}
        flags = [f for f, on in (("--resume", resume), ("--dry-run", dry_run)) if on]
        raise typer.Exit(_launch_training(processes, options, flags, set_ or []))
    where: dict[str, Any] = {"checkpoint_dir": checkpoints, "live_dir": live_dir or None, "resume": resume}
    result = train(cfg, train_path, val_path, out_dir, base=base, max_samples=samples, max_steps=steps, **where)
    if not is_main_process():
        return
    m = result.val_metrics
    out.print(
        f"[green]trained[/] {out_dir}: val macro-F1 {m['macro_f1']:.4f}, accuracy {m['accuracy']:.4f}, "
        f"{result.steps} steps, {result.train_samples_per_second:.1f} samples/s, {result.wall_time_s:.0f} s"
    )


def _launch_training(processes: int, options: dict[str, Any], flags: list[str], overrides: list[str]) -> int:
    """`tuneloop train` with the same options as `processes` data-parallel processes (torchrun); its exit code."""
    from tuneloop.train import launch

    args = ["train", *(a for k, v in options.items() if v is not None for a in (k, str(v))), *flags]
    code = launch(processes, [*args, *(a for item in overrides for a in ("--set", item))])
    if code:
        err.print(f"[red]error:[/] {processes} training processes failed (exit code {code}); see their log above.")
    return code


@app.command("pretrain")
@user_errors
def pretrain_cmd(
    train_path: TrainCsvOpt = TRAIN_CSV,
    val_path: ValCsvOpt = VAL_CSV,
    out_dir: Annotated[Path, typer.Option("--out", help="model dir to write (train --pretrained reads it).")] = Path(
        "models/pretrained"
    ),
    max_steps: Annotated[int, typer.Option("--max-steps", help="stop after N steps (smoke runs); -1 = epochs.")] = -1,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Continued masked-LM pre-training on the corpus' texts and pretrain.extra_text (the DVC `pretrain` stage)."""
    from tuneloop.pretrain import run

    record = run(cli_params(params, set_), [train_path, val_path], out_dir, max_steps)
    if not record["enabled"]:
        out.print(f"pretrain.enabled is false: nothing pre-trained ({out_dir}/pretrain.json says so)")
        return
    added = (record["vocab_extension"] or {}).get("added", 0)
    out.print(
        f"[green]pre-trained[/] {out_dir}: {record['texts']} texts, {record['steps']} steps, MLM loss "
        f"{record['mlm_loss_before']:.3f} -> {record['mlm_loss_after']:.3f}, {added} units added, "
        f"{record['wall_time_s']:.0f} s"
    )


@app.command("cv")
@user_errors
def cv_cmd(
    folds: Annotated[int | None, typer.Option("--folds", min=2, help="K stratified folds (default: cv.folds).")] = None,
    train_path: Annotated[
        Path, typer.Option("--train", help="labeled CSV; its rows and --val's are cut into folds.")
    ] = Path("data/prepared/train.csv"),
    val_path: Annotated[
        Path, typer.Option("--val", help="labeled CSV joined to --train (the test split is never used).")
    ] = Path("data/prepared/val.csv"),
    out_dir: Annotated[Path, typer.Option("--out", help="folder for cv.json and cv.md.")] = Path("reports/cv"),
    max_samples: Annotated[
        int, typer.Option("--max-samples", min=0, help="cross-validate a seeded sample of N rows of train + val.")
    ] = 0,
    max_steps: Annotated[
        int, typer.Option("--max-steps", min=0, help="stop each fold's fine-tune after N steps (0: epochs decide).")
    ] = 0,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """K fine-tunes over stratified folds of train + val: per-fold metrics and their mean ± std."""
    from tuneloop.cv import cross_validate

    cfg = cli_params(params, set_)
    report = cross_validate(
        cfg, train_path, val_path, out_dir, folds=folds, max_samples=max_samples, max_steps=max_steps or -1
    )
    f1, acc = report.summary.macro_f1, report.summary.accuracy
    out.print(
        f"[green]cross-validated[/] {report.folds} folds of {report.rows} rows: macro-F1 {f1.mean:.4f} ± {f1.std:.4f}, "
        f"accuracy {acc.mean:.4f} ± {acc.std:.4f}, {report.wall_time_s:.0f} s; report in {out_dir}"
    )


@app.command("evaluate")
@user_errors
def evaluate_cmd(
    model: Annotated[Path, typer.Option("--model", help="model dir written by `tuneloop train`.")] = Path(
        "models/candidate"
    ),
    data: Annotated[
        Path, typer.Option("--data", help="any labeled file (text, label, optional slice columns).")
    ] = Path("data/prepared/test.csv"),
    out_dir: Annotated[Path, typer.Option("--out", help="folder for metrics, plots and predictions.")] = Path(
        "reports/eval"
    ),
    behaviour: Annotated[
        str | None,
        typer.Option("--behaviour", help="behavioural tests YAML ('none' = skip; default: evaluate.behaviour_file)."),
    ] = None,
    train: Annotated[
        Path | None,
        typer.Option(
            "--train",
            help="training split the TF-IDF baseline is fitted on (default: the model's recorded training file, "
            "else train.csv beside --data).",
        ),
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Score a model on a labeled file: metrics, plots, slices, behavioural tests, the TF-IDF baseline (the DVC
    `evaluate` stage)."""
    from tuneloop.evaluate import evaluate

    chosen = "" if behaviour == "none" else behaviour
    m = evaluate(cli_params(params, set_), model, data, out_dir, chosen, train)
    rates = ", ".join(f"{k} {v:.0%}" for k, v in m.behaviour.items() if v is not None)
    base = f"; baseline macro-F1 {m.baseline.macro_f1:.4f}" if m.baseline is not None else "; no baseline"
    out.print(
        f"[green]evaluated[/] {model} on {data}: accuracy {m.accuracy:.4f}, macro-F1 {m.macro_f1:.4f}, "
        f"ECE {m.ece:.4f}" + base + (f"; behaviour: {rates}" if rates else "") + f"; reports in {out_dir}"
    )


@app.command("compress")
@user_errors
def compress_cmd(
    model: Annotated[Path, typer.Option("--model", help="model dir written by `tuneloop train`.")] = Path(
        "models/candidate"
    ),
    out_dir: Annotated[
        Path, typer.Option("--out", help="folder for model.onnx, model.int8.onnx, manifest.json.")
    ] = Path("models/onnx"),
) -> None:
    """Export a model to ONNX (fp32, graph-fused) and int8, each checked against torch (serve.backend onnx*).

    Registration builds these itself when serve.backend is onnx or onnx-int8; this command is for looking at
    them, benchmarking (bench/inference_backends.py) or serving a model dir by hand."""
    from tuneloop.compress.onnx import export

    manifest = export(model, out_dir)
    for backend, variant in manifest["variants"].items():
        out.print(
            f"[green]{backend}[/]: {out_dir / variant['file']} (agrees with torch on "
            f"{variant['agreement_with_torch']:.0%} of the parity texts, max probability difference "
            f"{variant['max_prob_diff_from_torch']:.2g})"
        )


@app.command("distill")
@user_errors
def distill_cmd(
    teacher: Annotated[str | None, typer.Option("--teacher", help="teacher model tag (default: the champion).")] = None,
    student_layers: Annotated[
        int | None,
        typer.Option("--student-layers", help="encoder layers of the student (default: distill.student_layers)."),
    ] = None,
    train_csv: TrainCsvOpt = TRAIN_CSV,
    val_csv: ValCsvOpt = VAL_CSV,
    test_csv: Annotated[Path, typer.Option("--test", help="the test rows the gate judges on.")] = Path(
        "data/prepared/test.csv"
    ),
    out_dir: Annotated[Path, typer.Option("--out", help="the student's model dir.")] = Path("models/student"),
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Distil a smaller student from a registered teacher, then evaluate -> gate (against the champion) -> register.

    The student is registered, not promoted: `tuneloop models promote TAG` when its speed is worth it."""
    from tuneloop import registry
    from tuneloop.compress.distill import distill
    from tuneloop.release import release

    cfg = cli_params(params, set_)
    entry = registry.resolve(teacher, cfg.task.name, purpose="distil")
    texts = None
    if cfg.distill.transfer_rows:
        from tuneloop.predlog import read_window

        window = read_window(model_tag=entry.tag, last=cfg.distill.transfer_rows)
        texts = window["text"].dropna().astype(str).tolist()
    distill(
        cfg,
        entry.path,
        train_csv,
        val_csv,
        out_dir,
        teacher_tag=entry.tag,
        student_layers=student_layers,
        transfer_texts=texts,
    )
    done = release(cfg, out_dir, test_csv, gate_dir=Path("reports/gate-student"), promote=False).raise_if_refused()
    out.print(
        f"[green]student of {entry.tag}[/]: {done.message}; registered as {done.entry.tag if done.entry else '-'}"
    )


@app.command("gate")
@user_errors
def gate_cmd(
    model: Annotated[Path, typer.Option("--model", help="challenger model dir.")] = Path("models/candidate"),
    eval_dir: Annotated[Path, typer.Option("--eval", help="its evaluation folder.")] = Path("reports/eval"),
    data: Annotated[Path, typer.Option("--data", help="the test file it was evaluated on.")] = Path(
        "data/prepared/test.csv"
    ),
    out_dir: Annotated[Path, typer.Option("--out", help="folder for gate.json and gate.md.")] = Path("reports/gate"),
    champion: Annotated[
        str, typer.Option("--champion", help="'auto' (the task's champion), 'none', or a model tag.")
    ] = "auto",
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Judge a challenger: absolute floors, then a paired test against the re-scored champion."""
    from tuneloop.release import release

    done = release(
        cli_params(params, set_),
        model,
        data,
        eval_dir=eval_dir,
        champion=champion,
        gate_dir=out_dir,
        register=False,
        promote=False,
    )
    done.raise_if_refused()
    out.print(f"[green]{done.message}[/]; report in {out_dir / 'gate.md'}")


TaskOpt = Annotated[str | None, typer.Option("--task", help="the task (default: task.name in params.yaml).")]


def _task(task: str | None, params: Path = Path("params.yaml")) -> str:
    """--task, else params.yaml's task.name, else the default task (outside a project)."""
    if task:
        from tuneloop.config import check_task_name

        return check_task_name(task)
    if params.is_file():
        return str(cli_params(params, None).task.name)
    from tuneloop.registry import DEFAULT_TASK

    return DEFAULT_TASK


@models_app.command("list")
@user_errors
def models_list(task: TaskOpt = None) -> None:
    """Every registered model (of every task, or of --task) with its stage and headline metrics."""
    from rich.table import Table

    from tuneloop import registry

    table = Table("task", "tag", "stage", "created", "macro-F1", "accuracy", "data version", "gate")
    table.columns[1].no_wrap = True
    for e in registry.entries(task):
        m, g = e.metadata.get("metrics", {}), e.metadata.get("gate", {})
        verdict = "-" if not g else "passed" if g.get("passed") else "failed"
        table.add_row(
            e.task,
            e.tag,
            e.stage,
            e.created,
            _fmt(m.get("macro_f1")),
            _fmt(m.get("accuracy")),
            str(e.metadata.get("data_version")),
            verdict,
        )
    Console(width=max(out.width, 150), emoji=False).print(table)  # tags are long; never truncate them


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


@models_app.command("show")
@user_errors
def models_show(
    tag: Annotated[str, typer.Argument(help="model tag (name:version, or a version of --task).")],
    task: TaskOpt = None,
) -> None:
    """One model's task, stage, metadata and store path."""
    import json

    from tuneloop import registry

    e = registry.get(tag, _task(task))
    shown = {
        "tag": e.tag,
        "task": e.task,
        "stage": e.stage,
        "created": e.created,
        "path": str(e.path),
        "metadata": e.metadata,
    }
    out.print_json(json.dumps(shown, default=str))


@models_app.command("register")
@user_errors
def models_register(
    model: Annotated[Path, typer.Argument(help="model dir written by `tuneloop train`.")] = Path("models/candidate"),
    eval_dir: Annotated[
        Path | None, typer.Option("--eval", help="its evaluation folder (metrics go into the metadata).")
    ] = None,
    reference: Annotated[Path | None, typer.Option("--reference", help="`tuneloop monitor reference` file.")] = None,
    task: TaskOpt = None,
) -> None:
    """Save a model dir into the task's registry as a challenger (with its monitoring reference when given)."""
    from tuneloop import registry
    from tuneloop.model import load_classifier
    from tuneloop.reports import EvalReport

    load_classifier(model)  # refuse foreign or broken dirs before they enter the store
    evaluated = EvalReport.load(eval_dir) if eval_dir else None
    entry = registry.register(
        model,
        task=_task(task),
        metrics=evaluated.summary() if evaluated else None,
        reference=reference,
        served=evaluated.judged_variant() if evaluated else None,
    )
    out.print(f"registered {entry.tag}")


@models_app.command("promote")
@user_errors
def models_promote(
    tag: Annotated[str, typer.Argument(help="model tag to make champion.")],
    data: Annotated[Path, typer.Option("--data", help="test file for the gate.")] = Path("data/prepared/test.csv"),
    force: Annotated[bool, typer.Option("--force", help="skip the gate (needs --reason).")] = False,
    reason: Annotated[str | None, typer.Option("--reason", help="why; recorded in the history.")] = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Promote a model: runs the gate on DATA against its task's champion unless --force."""
    from tuneloop import registry
    from tuneloop.errors import TuneloopError
    from tuneloop.release import release

    entry = registry.get(tag, _task(None, params))
    if force:
        if not reason:
            raise TuneloopError('--force skips the gate, so it needs --reason "why" (recorded in the history).')
        registry.promote(entry.tag, reason=reason, forced=True)
        out.print(f"[yellow]promoted without gate[/] {entry.tag}: {reason}")
        return
    cfg = cli_params(params, set_)
    if entry.task != cfg.task.name:  # judged within its own task, whatever params.yaml names
        cfg = cfg.model_copy(update={"task": cfg.task.model_copy(update={"name": entry.task})})
    done = release(cfg, entry.path, data, reason=reason or "passed the gate (tuneloop models promote)")
    done.raise_if_refused()
    if done.outcome == "no-new-model":
        out.print(f"{entry.tag} is already the champion")
        return
    out.print(f"[green]promoted[/] {entry.tag} (previous champion: {done.report.champion or 'none'})")


@models_app.command("rollback")
@user_errors
def models_rollback(
    reason: Annotated[str, typer.Option("--reason", help="why; recorded.")] = "manual rollback",
    task: TaskOpt = None,
) -> None:
    """Put the task's previous champion back."""
    from tuneloop import registry

    out.print(f"[yellow]rolled back[/]: champion is {registry.rollback(_task(task), reason=reason).tag}")


@models_app.command("push")
@user_errors
def models_push(
    tag: Annotated[str | None, typer.Argument(help="model tag (default: the task's champion).")] = None,
    task: TaskOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Copy a model to the shared store (store.url); pushing the champion also publishes it as the store's."""
    from tuneloop import store

    cfg = cli_params(params, set_)
    moved = store.push(tag, task or cfg.task.name, store.from_params(cfg.store))
    done = "pushed" if moved.copied else "already in the store:"
    out.print(f"{done} {moved.tag} -> {cfg.store.url}" + (" (the store's champion)" if moved.champion else ""))


@models_app.command("pull")
@user_errors
def models_pull(
    tag: Annotated[str | None, typer.Argument(help="model tag (default: the store's champion, promoted here).")] = None,
    task: TaskOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Copy a model from the shared store (store.url), every file checked against its SHA-256 manifest.

    With no TAG, the store's champion of the task, which becomes the champion here: `tuneloop serve` serves it.
    """
    from tuneloop import store

    cfg = cli_params(params, set_)
    moved = store.pull(tag, task or cfg.task.name, store.from_params(cfg.store))
    done = "pulled" if moved.copied else "already here:"
    out.print(f"{done} {moved.tag} <- {cfg.store.url}" + (" (champion)" if moved.champion else ""))


@app.command("package")
@user_errors
def package_cmd(
    tag: Annotated[str | None, typer.Option("--model", help="model tag (default: the task's champion).")] = None,
    task: TaskOpt = None,
) -> None:
    """Build the Bento (service + model) with `bentoml build`; prints the Bento tag."""
    from tuneloop import registry
    from tuneloop.package import build_bento

    out.print(build_bento(registry.resolve(tag, _task(task), purpose="package").tag))


@feedback_app.command("queue")
@user_errors
def feedback_queue(
    n: Annotated[int, typer.Option("--n", min=1, help="how many predictions to offer.")] = 200,
    out_path: Annotated[Path, typer.Option("--out", help="CSV to write.")] = Path("feedback-queue.csv"),
    model: Annotated[str | None, typer.Option("--model", help="only this model's predictions.")] = None,
    window: Annotated[
        int, typer.Option("--window", min=1, max=1_000_000, help="pick among the newest N predictions.")
    ] = 50_000,
) -> None:
    """Export the logged predictions most worth a human label (fill in the `label` column)."""
    from tuneloop.feedback import queue

    written = queue(out_path, n, model_tag=model, window=window)
    out.print(f"wrote {written} predictions to {out_path}: fill in `label`, then `tuneloop feedback import {out_path}`")


@feedback_app.command("import")
@user_errors
def feedback_import(
    path: Annotated[Path, typer.Argument(help="CSV with request_id and label columns.")],
    model: Annotated[str | None, typer.Option("--model", help="whose label set (default: the champion).")] = None,
    task: TaskOpt = None,
    new_labels: Annotated[
        bool, typer.Option("--new-labels", help="accept labels the model does not know (a new class to learn).")
    ] = False,
) -> None:
    """Record labels from a file as feedback, with the checks of POST /feedback (all or nothing)."""
    from tuneloop import registry
    from tuneloop.feedback import import_labels

    labels = registry.resolve(model, _task(task), purpose="label for").metadata.get("labels", [])
    done = import_labels(path, labels, new_labels=new_labels)
    blank = f"; {done.skipped_blank} rows left blank" if done.skipped_blank else ""
    added = f"; new labels the next retrain will learn: {', '.join(done.new_labels)}" if done.new_labels else ""
    out.print(f"recorded {done.recorded} labels{blank}{added}")


@pipeline_app.command("run")
@user_errors
def pipeline_run(
    force: Annotated[bool, typer.Option("--force", help="re-run every DVC stage even if cached.")] = False,
    set_: SetOpt = None,
) -> None:
    """Run the training flow (validate, prepare, pretrain, train, evaluate, gate, register, promote, package)."""
    from tuneloop.pipeline import load_flow

    flow = load_flow("flows/training.py", "training_pipeline")
    state = flow(overrides=set_ or [], force=force, return_state=True)
    if not state.is_completed():
        from tuneloop.errors import TuneloopError

        try:
            state.result()
        except TuneloopError as exc:
            raise TuneloopError(f"flow run {state.name}: {exc}") from None
        except Exception as exc:  # Prefect logged its traceback above; the exit says what ended the run
            raise TuneloopError(f"flow run {state.name}: {type(exc).__name__}: {exc}") from None
        raise TuneloopError(f"flow run ended {state.name}: {state.message}")
    result = state.result()
    out.print(f"[green]pipeline completed[/]: champion {result['champion']}, Bento {result['bento']}")


@pipeline_app.command("monitor")
@user_errors
def pipeline_monitor(set_: SetOpt = None) -> None:
    """Run the monitoring flow once: verdict, and a retrain when the policy says (in-process without a server)."""
    from tuneloop.pipeline import load_flow

    flow = load_flow("flows/monitoring.py", "monitoring")
    state = flow(overrides=set_ or [], return_state=True)
    if not state.is_completed():
        from tuneloop.errors import TuneloopError

        raise TuneloopError(f"monitoring flow run ended {state.name}: {state.message}")
    verdict = state.result()
    out.print(f"monitoring verdict: {verdict['status']}: {verdict['reason']}")
    if verdict.get("retrained"):
        done = verdict["retrained"]
        out.print(f"retrained: {done['outcome']}, champion {done['champion']}")


@app.command("deploy")
@user_errors
def deploy_cmd(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Create the CPU and GPU work pools, the scheduled training and monitoring deployments and the train-stage
    deployment on the Prefect server."""
    from tuneloop.orchestration import deploy_monitoring, deploy_train_stage, deploy_training, train_stage_pool

    cfg = cli_params(params, set_)
    pools = cfg.deploy
    deployment_id = deploy_training(cfg, Path.cwd())
    monitoring_id = deploy_monitoring(cfg, Path.cwd())
    stage_id = deploy_train_stage(cfg, Path.cwd())
    out.print(f"work pools {pools.cpu_pool} and {pools.gpu_pool} (process)")
    out.print(f"deployment tuneloop-monitoring/monitoring ({monitoring_id}): every {cfg.monitor.schedule_minutes} min")
    out.print(
        f"deployment tuneloop-training/training ({deployment_id}): cron '{pools.training_cron}' "
        f"{pools.timezone} and on drift of task '{cfg.task.name}' (retrain), pool {pools.cpu_pool}"
    )
    stage_pool = train_stage_pool(pools)
    if stage_id is None:
        out.print("train stage: in the training flow's own process (deploy.train_pool: inline)")
    else:
        out.print(
            f"deployment tuneloop-train-stage/train ({stage_id}): the training flow's train stage, pool {stage_pool}"
        )
    workers = dict.fromkeys([pools.cpu_pool, stage_pool or pools.cpu_pool])
    out.print("Start workers: " + "; ".join(f"prefect worker start --pool {name}" for name in workers))


@app.command("serve")
@user_errors
def serve_cmd(
    port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP port.")] = 3000,
    host: Annotated[str, typer.Option(help="interface to listen on.")] = "127.0.0.1",
    model: Annotated[str | None, typer.Option("--model", help="model tag (default: the champion).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="worker processes, each loading the model once.")] = 1,
) -> None:
    """Serve the classifier over HTTP with `bentoml serve` (/classify, /feedback, /metadata, /readyz).

    SIGTERM or Ctrl-C stops the whole process tree gracefully (the prediction log is flushed).
    """
    import os

    from tuneloop import procs, registry

    procs.require_free_port(host, port, "tuneloop serve")
    params_file = Path(os.environ.get("TUNELOOP_PARAMS", "params.yaml"))  # the file the service reads
    params = cli_params(params_file, None) if params_file.is_file() else None
    chosen = registry.resolve(model, params.task.name if params else _task(None), purpose="serve")
    from tuneloop.package import bento_name

    env = procs.with_allocator(
        {**os.environ, "BENTOML_DO_NOT_TRACK": "true"}, params.serve.allocator if params else "auto"
    )
    env["BENTOML_CONFIG_OPTIONS"] = f"services.{bento_name(chosen.task)}.workers={workers}"
    if model:  # pinned; without --model the service follows the task's champion as it changes
        env["TUNELOOP_MODEL_TAG"] = chosen.tag
    else:
        env.pop("TUNELOOP_MODEL_TAG", None)
    out.print(
        f"serving {chosen.tag} on http://{host}:{port} ({workers} worker(s)); try:\n"
        f"  curl -s -X POST http://{host}:{port}/classify -H 'content-type: application/json' "
        '-d \'{"texts": ["I lost my card"]}\''
    )
    serve = [sys.executable, "-m", "bentoml", "serve", "tuneloop.serve.service:TextClassifier"]
    code = procs.run_tree(
        [*serve, "--host", host, "--port", str(port)], env, "tuneloop serve", lambda cmd: "--worker-id" in cmd
    )
    raise typer.Exit(code)


@app.command("dashboard")
@user_errors
def dashboard(
    host: Annotated[str, typer.Option(help="interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="port.")] = 4200,
) -> None:
    """Start a Prefect server (SQLite by default; PostgreSQL via PREFECT_API_DATABASE_CONNECTION_URL).

    SIGTERM or Ctrl-C stops the server and everything it started.
    """
    import os

    from tuneloop import procs

    procs.require_free_port(host, port, "tuneloop dashboard")
    url = f"http://{host}:{port}"
    db = os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL", "SQLite (~/.prefect/prefect.db)")
    out.print(
        f"Prefect dashboard: {url}  (database: {db.split('@')[-1]})\n"
        f"Point flows at it with: export PREFECT_API_URL={url}/api"
    )
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    prefect = [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)]
    raise typer.Exit(procs.run_tree(prefect, env, "tuneloop dashboard"))


# Monitoring (issue 12): its own module; imported last because it reuses the helpers above.
from tuneloop.monitor.cli import monitor_app, simulate_cmd  # noqa: E402

app.add_typer(monitor_app, name="monitor")
app.command("simulate")(simulate_cmd)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    app(args=argv if argv is not None else sys.argv[1:], prog_name="tuneloop")
