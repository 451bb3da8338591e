"""Progress bars of a running job, one per stream, fed from the job store."""

from __future__ import annotations

import contextlib

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.jobs.state import JobStore


def progress_bars(console: Console, show: bool) -> Progress:
    """One line per stream: `<stream> [<status>]`, a bar of frames analysed out of those expected,
    and the frames written (committed) so far."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("analysed, written {task.fields[written]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not show,
    )


def update_progress(progress: Progress, tasks: dict[str, int], store: JobStore, job_id: str) -> None:
    """Bars advance per analysed frame, so they move as the pool works (commits come in bursts), with the
    frames written (committed) beside them. The text is escaped: rich would read `[running]` as a style."""
    with contextlib.suppress(Exception):
        snapshot = store.snapshot(job_id)
        for stream_id, task in tasks.items():
            info = snapshot["streams"].get(stream_id, {})
            status = info.get("status") or "pending"
            progress.update(
                task,
                completed=int(info.get("analysed", 0) or 0),
                written=int(info.get("written", 0) or 0),
                description=escape(f"{stream_id} [{status}]"),
            )
