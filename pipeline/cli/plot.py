"""`sanstream plot`: each class's share of the frame (or of one region, `--region`) over time for one
stream, as a PNG line chart.

A picture answers "when was the road busy" faster than a table, and it is drawn from the same Parquet
output as `sanstream query`, so it works on a finished job and on one still writing.
"""

from __future__ import annotations

import argparse
import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from pipeline.cli.common import CommandError, require_out_dir
from pipeline.jobs.ids import id_problem
from pipeline.storage.query import run_sql

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Classes named in the legend; with a long vocabulary the rest are drawn thin and grey, unnamed.
LEGEND_CLASSES = 12
#: Room below 0 % and above 100 % (as a fraction of the frame): a class that fills the whole frame, or is
#: absent, draws its line on the border, where the axis would hide it without this margin.
Y_MARGIN = 0.03

_ROWS_SQL = """
SELECT job_id, frame_index, pts_seconds, class_id, class_name, fraction
FROM class_areas
WHERE stream_id = ?
ORDER BY pts_seconds, frame_index, class_id
"""

_REGION_ROWS_SQL = """
SELECT job_id, frame_index, pts_seconds, class_id, class_name, fraction
FROM region_areas
WHERE stream_id = ? AND region = ?
ORDER BY pts_seconds, frame_index, class_id
"""

_REGIONS_SQL = "SELECT DISTINCT region FROM region_areas WHERE stream_id = ? ORDER BY 1"
_SAFE_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("plot", help="chart each class's area fraction over time for one stream")
    parser.add_argument("out", type=Path, help="output directory of a job")
    parser.add_argument("--stream", required=True, help="stream id to plot")
    parser.add_argument("--job", default=None, help="job id (default: the latest job that wrote this stream)")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="image file to write (default: OUT/plots/<job>/<stream>.png, with --region "
        "OUT/plots/<job>/<stream>/region-<region>.png)",
    )
    parser.add_argument(
        "--region",
        default=None,
        help="plot each class's share of this region of the stream (from region_areas) instead of the frame's",
    )
    parser.set_defaults(handler=run)


def _latest_job(out: Path, stream: str) -> tuple[str, list[str]]:
    """The job that most recently started writing `stream` (by its first frame's arrival), and all of
    them; job ids break ties, since generated ones sort by creation time."""
    jobs = run_sql(
        out,
        "SELECT job_id, min(wall_time) AS started FROM frames WHERE stream_id = ? GROUP BY job_id "
        "ORDER BY started DESC NULLS LAST, job_id DESC",
        [stream],
    )["job_id"].to_pylist()
    if not jobs:
        jobs = run_sql(
            out, "SELECT DISTINCT job_id FROM class_areas WHERE stream_id = ? ORDER BY 1 DESC", [stream]
        )["job_id"].to_pylist()
    return (jobs[0] if jobs else ""), jobs


def _pick_job(out: Path, stream: str, job: str | None) -> tuple[str, str | None]:
    """`job`, or the latest job that wrote `stream` ("" when none did) with a note when others did too."""
    if job is not None:
        return job, None
    job, jobs = _latest_job(out, stream)
    note = None
    if len(jobs) > 1:
        note = (
            f"stream {stream!r} was written by {len(jobs)} jobs; plotting the latest, {job} "
            f"(others: {', '.join(j for j in jobs if j != job)}; choose with --job)"
        )
    return job, note


def _stream_rows(out: Path, stream: str, job: str | None) -> tuple[pa.Table, str | None]:
    """The stream's class-area rows of `job` (default: the latest job that has the stream), with errors
    that list what IS there when nothing matches, and a note when other jobs wrote the stream too."""
    job, note = _pick_job(out, stream, job)
    rows = run_sql(out, _ROWS_SQL, [stream], job_id=job) if job else pa.table({})
    if rows.num_rows == 0:
        _missing_stream(out, stream, job)
    return rows, note


def _missing_stream(out: Path, stream: str, job: str) -> None:
    """Raise the error for a stream `job` wrote no class areas of: no such stream, or other jobs wrote it."""
    streams = run_sql(out, "SELECT DISTINCT stream_id FROM class_areas ORDER BY 1")["stream_id"]
    present = [str(s) for s in streams.to_pylist()]
    if stream not in present:
        listing = ", ".join(present) if present else "none yet"
        raise CommandError(f"no stream {stream!r} in {out}; streams present: {listing}")
    jobs = run_sql(out, "SELECT DISTINCT job_id FROM class_areas WHERE stream_id = ? ORDER BY 1", [stream])
    raise CommandError(
        f"job {job!r} wrote no rows for stream {stream!r}; jobs that did: "
        + ", ".join(jobs["job_id"].to_pylist())
    )


def _region_rows(out: Path, stream: str, job: str | None, region: str) -> tuple[pa.Table, str, str | None]:
    """The region-area rows of one region of the stream in `job` (default: the latest job that has the
    stream), the region's name as stored, and the note of `_pick_job`.

    The name matches exactly, or else case-insensitively (region names are unique that way within a
    stream). An unknown name is an error listing the stream's regions; a stream without any says so.
    """
    job, note = _pick_job(out, stream, job)
    regions = (
        [r for r in run_sql(out, _REGIONS_SQL, [stream], job_id=job)["region"].to_pylist() if r is not None]
        if job
        else []
    )
    if region not in regions:
        folded = [r for r in regions if r.casefold() == region.casefold()]
        if len(folded) == 1:
            region = folded[0]
    if region in regions:
        return run_sql(out, _REGION_ROWS_SQL, [stream, region], job_id=job), region, note
    if not regions:
        has_areas = "SELECT 1 FROM class_areas WHERE stream_id = ? LIMIT 1"
        if not job or run_sql(out, has_areas, [stream], job_id=job).num_rows == 0:
            _missing_stream(out, stream, job)  # an unknown stream or job: the same error as without --region
        raise CommandError(
            f"stream {stream!r} of job {job} has no regions (no region_areas rows); "
            "plot the whole frame without --region"
        )
    raise CommandError(
        f"no region {region!r} in stream {stream!r} of job {job}; its regions: {', '.join(regions)}"
    )


def region_file_name(region: str) -> str:
    """`region-<name>.png`; a name that is not a safe file name is spelled safely, with a short hash of
    the real name so two such names never share a file."""
    if _SAFE_NAME_RE.fullmatch(region) and not region.startswith("."):
        return f"region-{region}.png"
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", region).strip("._") or "region"
    digest = hashlib.sha256(region.encode()).hexdigest()[:8]
    return f"region-{safe[:60]}-{digest}.png"


def _series(rows: pa.Table) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Times (one per frame), class names by class id, and a frames x classes fraction matrix.

    Keyed by frame index, so a frame's classes line up even if a class is missing from some frame.
    """
    frame_index = rows["frame_index"].to_numpy()
    class_id = rows["class_id"].to_numpy()
    frames, frame_pos = np.unique(frame_index, return_inverse=True)
    pts = np.zeros(len(frames))
    pts[frame_pos] = rows["pts_seconds"].to_numpy()
    n_classes = int(class_id.max()) + 1
    names = [f"class {i}" for i in range(n_classes)]
    for cid, name in zip(class_id.tolist(), rows["class_name"].to_pylist(), strict=True):
        names[cid] = name
    fractions = np.full((len(frames), n_classes), np.nan)
    fractions[frame_pos, class_id] = rows["fraction"].to_numpy()
    order = np.argsort(pts, kind="stable")
    return pts[order], names, fractions[order]


def render(
    path: Path,
    pts: np.ndarray,
    names: list[str],
    fractions: np.ndarray,
    title: str,
    ylabel: str = "share of frame",
) -> None:
    fig = figure(pts, names, fractions, title, ylabel)
    try:
        fig.savefig(path)
    finally:
        _pyplot().close(fig)


def _pyplot() -> Any:
    """pyplot on the Agg backend (no display needed; the backend must be chosen before pyplot loads)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure(
    pts: np.ndarray,
    names: list[str],
    fractions: np.ndarray,
    title: str,
    ylabel: str = "share of frame",
) -> Figure:
    """The chart as a matplotlib Figure (the caller saves and closes it): one line per class, the legend
    naming the LEGEND_CLASSES largest, the y axis from 0 to 100 % with Y_MARGIN to spare on both sides;
    `ylabel` says what the 100 % is (the frame, or a region)."""
    plt = _pyplot()
    from matplotlib.ticker import PercentFormatter

    means = np.nan_to_num(fractions).mean(axis=0)  # a class missing from a frame counts as absent
    ranked = np.argsort(-means, kind="stable")
    named = set(ranked[:LEGEND_CLASSES].tolist())
    palette = plt.get_cmap("tab10" if len(named) <= 10 else "tab20").colors
    # With every class named, colour follows the class id, so one vocabulary looks the same in every plot;
    # otherwise the legend's top classes take the palette in rank order.
    by_id = len(named) == len(names)
    fig, ax = plt.subplots(figsize=(10, 5), dpi=120)
    try:
        for rank, cid in enumerate(ranked.tolist()):
            if cid in named:
                colour = palette[cid if by_id else rank]
                ax.plot(pts, fractions[:, cid], label=names[cid], color=colour, linewidth=1.8)
            else:
                ax.plot(pts, fractions[:, cid], color="0.75", linewidth=0.6, zorder=0)
        ax.set_xlabel("time in stream (s)")
        ax.set_ylabel(ylabel)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_ylim(-Y_MARGIN, 1 + Y_MARGIN)
        ax.set_yticks(np.linspace(0.0, 1.0, 6))  # 0-100 % in steps of 20: no tick in the margins
        if len(pts) > 1:
            ax.set_xlim(pts[0], pts[-1])
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        hidden = len(names) - len(named)
        ax.legend(
            title=f"class (+{hidden} more in grey)" if hidden else "class",
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize="small",
        )
        fig.tight_layout()
    except BaseException:
        plt.close(fig)
        raise
    return fig


def run(args: argparse.Namespace) -> int:
    out = require_out_dir(args.out)
    if args.output is not None and args.output.suffix.lower() not in (
        ".png",
        ".svg",
        ".pdf",
        ".jpg",
        ".jpeg",
    ):
        raise CommandError(f"{args.output}: the output must end in .png, .svg, .pdf or .jpg")
    if args.job is not None and (problem := id_problem(args.job)) is not None:
        raise CommandError(f"--job {args.job!r}: {problem}")
    if args.region is None:
        rows, note = _stream_rows(out, args.stream, args.job)
        region = None
    else:
        rows, region, note = _region_rows(out, args.stream, args.job, args.region)
    if note:
        print(note)
    pts, names, fractions = _series(rows)
    job = rows["job_id"][0].as_py()
    if args.output is not None:
        target = args.output
    elif region is None:
        target = out / "plots" / job / f"{args.stream}.png"
    else:  # beside the stream's whole-frame plot, never in its place
        target = out / "plots" / job / args.stream / region_file_name(region)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CommandError(f"cannot create {target.parent}: {error.strerror or error}") from None
    frames = len(pts)
    where = f"stream {args.stream}" if region is None else f"region {region} of stream {args.stream}"
    ylabel = "share of frame" if region is None else "share of region"
    try:
        render(target, pts, names, fractions, f"{where} — job {job} ({frames:,} frames)", ylabel)
    except OSError as error:
        raise CommandError(f"cannot write {target}: {error.strerror or error}") from None
    classes = f"{len(names)} class{'es' if len(names) != 1 else ''}"
    scope = "" if region is None else f"region {region}, "
    print(f"wrote {target} ({scope}{classes}, {frames:,} frame{'s' if frames != 1 else ''})")
    return 0
