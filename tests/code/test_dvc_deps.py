"""dvc.yaml caches never go stale: every stage depends on each module it runs (derived here from the
imports), and the committed dvc.lock records the code and params that are in the tree."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

SRC = REPO / "src" / "tuneloop"
# Each stage runs `python -m tuneloop <command>`: the package entry (top-level imports of cli only,
# typer and rich) plus the stage module and config, and whatever those import, anywhere in the file.
ENTRY = ["__init__.py", "__main__.py", "cli.py", "cli_common.py"]
STAGE_MODULES = {
    "validate": "validate",
    "prepare": "prepare",
    "pretrain": "pretrain",
    "train": "train",
    "evaluate": "evaluate",
}


def _module_file(name: str) -> Path | None:
    relative = name.removeprefix("tuneloop").lstrip(".").replace(".", "/")
    for candidate in (SRC / f"{relative}.py", SRC / relative / "__init__.py"):
        if relative and candidate.is_file():
            return candidate
    return None


def tuneloop_imports(path: Path) -> set[str]:
    """Every tuneloop module a file imports, at module level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module == "tuneloop":
            found |= {f"tuneloop.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tuneloop."):
            found.add(str(node.module))
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("tuneloop.")}
    return found


def runs(stage_module: str) -> set[str]:
    """The source files a stage executes, relative to the repository root."""
    files = {SRC / name for name in ENTRY}
    todo, seen = [f"tuneloop.{stage_module}", "tuneloop.config"], set()
    while todo:
        name = todo.pop()
        path = _module_file(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        files.add(path)
        todo += sorted(tuneloop_imports(path))
    return {str(f.relative_to(REPO)) for f in files}


@pytest.mark.parametrize("stage", sorted(STAGE_MODULES))
def test_each_stage_depends_on_every_module_it_runs(stage):
    deps = set(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]["deps"])
    missing = runs(STAGE_MODULES[stage]) - deps
    assert not missing, f"dvc.yaml stage '{stage}' runs {sorted(missing)} but does not depend on them"


def test_the_import_walk_finds_function_level_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom tuneloop.text import x\ndef f():\n    from tuneloop import registry\n")
    assert tuneloop_imports(module) == {"tuneloop.text", "tuneloop.registry"}
    assert "src/tuneloop/model.py" in runs("evaluate") and "src/tuneloop/text.py" in runs("validate")


def _flat(params: dict, key: str):
    node = params
    for part in key.split("."):
        node = node[part]
    return node


def test_committed_dvc_lock_matches_the_code_and_params():
    """`make demo` on a fresh clone must leave dvc.lock unchanged: its code hashes and params are the tree's."""
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    stale = []
    for stage, body in spec.items():
        recorded = {d["path"]: d.get("md5") for d in lock.get(stage, {}).get("deps", [])}
        for dep in body.get("deps", []):
            path = REPO / dep
            if dep.startswith("src/") and path.is_file():
                if recorded.get(dep) != hashlib.md5(path.read_bytes()).hexdigest():
                    stale.append(f"{stage}: {dep}")
        locked_params = lock.get(stage, {}).get("params", {}).get("params.yaml", {})
        for key in body.get("params", []):
            if locked_params.get(key, "<missing>") != _flat(params, key):
                stale.append(f"{stage}: param {key}")
    assert not stale, f"dvc.lock is stale ({stale}): run `make demo` (or `dvc repro`) and commit dvc.lock"


def test_the_model_records_exactly_the_params_its_stage_depends_on():
    """tuneloop.json (a train output DVC hashes) holds only the params the train stage lists: a key it does not
    list (serve.backend) changed the file without re-running the stage, so the lock's outs went stale."""
    from tuneloop.config import load_params
    from tuneloop.train import model_params

    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]
    recorded = model_params(load_params(REPO / "params.yaml"))
    flat = {f"{section}.{key}" for section, keys in recorded.items() for key in keys}
    listed = set(stage["params"])
    whole = {key for key in listed if "." not in key}  # a whole section (vocab)
    assert {key for key in flat if key.split(".")[0] not in whole} | whole == listed
