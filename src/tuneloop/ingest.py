"""Import stage: bring a user's file into the project as the canonical raw corpus, tracked by DVC.

Any supported format (CSV, TSV, Parquet, JSONL) becomes `data/raw/corpus.csv` (UTF-8 CSV,
columns text, label, then the file's other columns), every row kept: judging rows is
validation's job, not import's. Then `dvc add data/raw` records the new version in `data.dvc`
(created on first use so the top-level `data.dvc` is the one tracking data/raw).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from tuneloop.errors import DataError
from tuneloop.provenance import DATA_DVC
from tuneloop.tabular import LABEL, TEXT, read_table, write_csv_atomic

log = logging.getLogger(__name__)


def import_file(
    source: str | Path, raw_path: str | Path, *, text_col: str = TEXT, label_col: str = LABEL, track: bool = True
) -> Path:
    """Copy `source` into `raw_path` in canonical form and (with `track`) `dvc add` its folder.

    Returns the path written. Nothing is written if `source` cannot be read.
    """
    table = read_table(source, text_col, label_col)
    raw_path = Path(raw_path)
    repo_root = find_dvc_root(raw_path) if track else None
    write_csv_atomic(table.frame, raw_path)
    log.info("wrote %d rows to %s", len(table.frame), raw_path)
    if repo_root is not None:
        dvc_track(repo_root, raw_path.resolve().parent)
    return raw_path


def find_dvc_root(path: Path) -> Path:
    """The DVC repository that contains `path` (its folder need not exist yet)."""
    here = path.resolve().parent
    for candidate in (here, *here.parents):
        if (candidate / ".dvc").is_dir():
            return candidate
    raise DataError(
        f"{path}: not inside a DVC repository. Run `git init && dvc init` in the project root, "
        "or pass --no-dvc to write the file without versioning it."
    )


def dvc_track(repo_root: Path, folder: Path) -> Path:
    """`dvc add` the raw folder so `data.dvc` at the repository root tracks it."""
    from dvc.repo import Repo  # heavy: only when something is tracked

    rel = folder.relative_to(repo_root).as_posix()
    dvc_file = repo_root / DATA_DVC
    if not dvc_file.exists():
        # `dvc add data/raw` would write data/raw.dvc; a stage file that already names the path
        # is reused instead, which keeps the top-level data.dvc of ARCHITECTURE.md.
        dvc_file.write_text(f"outs:\n- path: {rel}\n", encoding="utf-8")
    with quiet_dvc(), Repo(str(repo_root)) as repo:
        repo.add(rel)
    return dvc_file


@contextlib.contextmanager
def quiet_dvc() -> Iterator[None]:
    """Silence DVC's INFO chatter ("To track the changes with git...") while its API runs.

    `import dvc` installs console handlers bound to the streams of that moment; our CLI prints
    its own summary, so only DVC's warnings and errors should pass.
    """
    dvc_log = logging.getLogger("dvc")
    level = dvc_log.level
    dvc_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        dvc_log.setLevel(level)
