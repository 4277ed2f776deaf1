"""The local Evidently workspace: one project per monitored task, one snapshot per run, and a
dashboard with the signals over time. `tuneloop monitor ui` opens Evidently's own UI on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneloop.monitor.verdict import Verdict

REPAIR = "Move the workspace folder aside (the next monitoring run starts a new one) or repair it"


def check_readable(path: Path) -> None:
    """Raise a MonitorError naming `path` when Evidently cannot list its projects (a project file cut short)."""
    from evidently.ui.workspace import Workspace

    from tuneloop.errors import first_line
    from tuneloop.monitor import MonitorError

    try:
        Workspace.create(str(path)).list_projects()
    except Exception as exc:  # whatever Evidently raises on its own files
        raise MonitorError(
            f"the Evidently workspace {path} cannot be read ({type(exc).__name__}: {first_line(exc)}). {REPAIR}."
        ) from None


def project_for(workspace: Any, name: str) -> Any:
    """The workspace's project called `name`, created (with its dashboard) on first use."""
    for project in workspace.list_projects():
        if project.name == name:
            return project
    project = workspace.create_project(name, description=f"tuneloop monitoring of {name}")
    add_dashboard(project)
    return project


# The ValueDrift columns the signals report; their p-values over time are the dashboard.
PANEL_COLUMNS = {
    "Traffic unlike the reference": ["novelty"],
    "Model outputs": ["predicted", "confidence"],
    "Text descriptors": ["text_chars", "word_count", "unk_rate", "non_letter_share"],
}


def add_dashboard(project: Any) -> None:
    """Panels: drift p-values of every ValueDrift signal over time (lower = more drifted), and
    the labeled accuracy when feedback exists."""
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import line_plot_panel, text_panel

    heading = "tuneloop monitoring: drift p-values per run (drifted below alpha; predicted labels: label_shift_alpha)"
    project.dashboard.add_panel(text_panel(title=heading))
    for title, columns in PANEL_COLUMNS.items():
        values = [
            PanelMetric(legend=column, metric="evidently:metric_v2:ValueDrift", metric_labels={"column": column})
            for column in columns
        ]
        project.dashboard.add_panel(line_plot_panel(title=title, values=values, size="half"))
    accuracy = [PanelMetric(legend="accuracy (feedback rows)", metric="evidently:metric_v2:Accuracy")]
    project.dashboard.add_panel(line_plot_panel(title="Accuracy on labeled rows", values=accuracy, size="half"))


def add_snapshot(path: Path, verdict: Verdict, snapshot: Any, snapshots: tuple[Any, ...] = ()) -> str:
    """Store `snapshot` in the task's project (the model tag and status as tags); returns its id."""
    from evidently.ui.workspace import Workspace

    workspace = Workspace.create(str(path))
    project = project_for(workspace, verdict.window.model_tag.split(":")[0])
    ref = workspace.add_run(project.id, snapshot, name=f"{verdict.window.model_tag} {verdict.status}")
    for extra in snapshots:  # the labeled-metrics report, when feedback exists
        workspace.add_run(project.id, extra, name=f"{verdict.window.model_tag} labeled")
    return str(ref.id)
