"""The test suite of an earlier revision, run then and now, side by side: is the same suite slower today?

Issue 10's target was "`make test` not longer than today's (~4 min)", set when the suite held 128 tests; later
issues added three times as many. This runs the earlier revision's own tests in a worktree of it, and the same
tests at HEAD (matched by node id; a test whose module moved matches by its name when that is unique), in ABBA
order over --rounds pairs, both with this interpreter, the tree's own src/ first on PYTHONPATH and no shared data
(TUNELOOP_SHARED_DATA points nowhere: the shared-data tests skip on both sides). Prints JSON: per run the revision,
tests passed / skipped / failed and pytest's seconds; then the ratio now / then of the summed seconds.

    .venv/bin/python bench/suite_then_now.py --rev 4cba09c --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|errors?)")


def worktree(rev: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(where), rev], check=True)
    return where


def environment(tree: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(tree / "src"), TUNELOOP_SHARED_DATA=str(tree / "no-shared-data"))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # `python -m tuneloop` in DVC stages
    return env


def collect(tree: Path) -> list[str]:
    """Node ids of the tree's tests, as that tree's pytest collects them."""
    listing = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=tree,
        env=environment(tree),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line for line in listing.splitlines() if "::" in line]


def match(then: list[str], now: list[str]) -> tuple[list[str], list[str]]:
    """Each earlier id in `now`: as it is, else by its `::name[params]` when exactly one id at HEAD ends so."""
    present, by_name = set(now), {}
    for node in now:
        by_name.setdefault(node.split("::", 1)[1], []).append(node)
    matched, missing = [], []
    for node in then:
        candidates = [node] if node in present else by_name.get(node.split("::", 1)[1], [])
        if len(candidates) == 1:
            matched.append(candidates[0])
        else:
            missing.append(node)
    return matched, missing


def run(tree: Path, ids: list[str], label: str) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as args_file:
        args_file.write("\n".join(ids) + "\n")
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"@{args_file.name}"],
        cwd=tree,
        env=environment(tree),
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    Path(args_file.name).unlink()
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    counts = {kind.rstrip("s"): int(n) for n, kind in SUMMARY.findall(last)}
    seconds = re.search(r"in ([\d.]+)s", last)
    return {
        "side": label,
        "exit_code": done.returncode,
        "tests": len(ids),
        **counts,
        "pytest_seconds": float(seconds.group(1)) if seconds else None,
        "wall_seconds": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", required=True, help="the earlier revision whose suite is the baseline")
    parser.add_argument("--rounds", type=int, default=1, help="pairs of runs, ABBA order (then-now, now-then, ...)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tuneloop-suite-") as tmp:
        then_tree, now_tree = worktree(args.rev, Path(tmp) / "then"), worktree("HEAD", Path(tmp) / "now")
        try:
            then_ids = collect(then_tree)
            now_ids, missing = match(then_ids, collect(now_tree))
            print(json.dumps({"rev": args.rev, "tests_then": len(then_ids), "matched_now": len(now_ids),
                              "not_found_now": missing}), flush=True)  # fmt: skip
            sides = {"then": (then_tree, then_ids), "now": (now_tree, now_ids)}
            results = []
            for round_ in range(args.rounds):
                for side in ("then", "now") if round_ % 2 == 0 else ("now", "then"):
                    results.append(run(*sides[side], side))
                    print(json.dumps(results[-1]), flush=True)
        finally:
            for tree in (then_tree, now_tree):
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
    total = {side: sum(r["pytest_seconds"] or 0 for r in results if r["side"] == side) for side in ("then", "now")}
    print(json.dumps({"pytest_seconds": total, "ratio_now_to_then": round(total["now"] / total["then"], 3)}))


if __name__ == "__main__":
    main()
