"""`sanstream plot` draws a real PNG from Parquet written by the production writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import plot
from pipeline.cli.main import main
from tests.pipeline.cli.test_cli_query import write_outputs
from tests.pipeline.storage.test_query_regions import write_regions

# matplotlib's tab10 C0 and C1: with every class in the legend, class 0 and class 1 get these colours.
CLASS0_RGB = (31, 119, 180)
CLASS1_RGB = (255, 127, 14)


def run_cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def pixels_of(image: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    """(row, col) of every pixel with exactly this colour (line interiors are drawn in the pure colour)."""
    return np.argwhere(np.all(image[..., :3] == np.array(rgb, dtype=np.uint8), axis=-1))


def test_plot_writes_a_line_chart_per_class(tmp_path: Path, capsys) -> None:
    out = write_outputs(tmp_path / "out")
    code, text, err = run_cli(capsys, "plot", out, "--stream", "cam-a")
    assert code == 0, err
    target = out / "plots" / "job-q" / "cam-a.png"  # OUT/plots/<job>/<stream>.png
    assert f"wrote {target} (2 classes, 3 frames)" in text
    assert "written by" not in text  # one job wrote the stream: no note
    with Image.open(target) as png:
        assert png.format == "PNG" and png.size == (1200, 600)
        image = np.asarray(png.convert("RGB"))
    road, car = pixels_of(image, CLASS0_RGB), pixels_of(image, CLASS1_RGB)
    assert len(road) > 300 and len(car) > 300  # two real lines (plus their legend swatches)
    # road covers 50-100% of the frame and car 0-50%: the road line lies above the car line.
    assert np.median(road[:, 0]) < np.median(car[:, 0])
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50  # text, axes, grid: not a blank canvas


def test_without_a_job_the_latest_job_is_plotted_with_a_note(tmp_path: Path, capsys) -> None:
    # Started later (by its first frame's wall time) although its id sorts first: the wall time decides.
    out = write_outputs(tmp_path / "out", first_wall=1_000.0)
    write_outputs(
        out, {"cam-a": (["water"], [[10], [20], [30], [40]])}, job_id="job-a-later", first_wall=9_000.0
    )
    write_outputs(out, {"cam-a": (["sand"], [[50]])}, job_id="job-z-first", first_wall=500.0)
    code, text, err = run_cli(capsys, "plot", out, "--stream", "cam-a")
    assert code == 0, err
    assert (
        "stream 'cam-a' was written by 3 jobs; plotting the latest, job-a-later "
        "(others: job-q, job-z-first; choose with --job)"
    ) in text
    target = out / "plots" / "job-a-later" / "cam-a.png"
    assert f"wrote {target} (1 class, 4 frames)" in text
    with Image.open(target) as png:
        assert png.size == (1200, 600)
    assert sorted(p.relative_to(out / "plots").as_posix() for p in (out / "plots").rglob("*.png")) == [
        "job-a-later/cam-a.png"
    ]
    # a stream only one job wrote: that job, no note, even though other jobs exist in OUT
    code, text, err = run_cli(capsys, "plot", out, "--stream", "cam-b")
    assert code == 0, err
    assert "written by" not in text and f"wrote {out / 'plots' / 'job-q' / 'cam-b.png'}" in text
    # with --job: that job, no note, its own default file
    code, text, err = run_cli(capsys, "plot", out, "--stream", "cam-a", "--job", "job-q")
    assert code == 0, err
    assert "written by" not in text
    assert f"wrote {out / 'plots' / 'job-q' / 'cam-a.png'} (2 classes, 3 frames)" in text
    assert (out / "plots" / "job-a-later" / "cam-a.png").exists()  # each job's plot has its own file


def test_plot_to_a_chosen_file_with_a_job(tmp_path: Path, capsys) -> None:
    out = write_outputs(tmp_path / "out")
    write_outputs(out, {"cam-a": (["water"], [[10], [20], [30], [40]])}, job_id="job-two")
    target = tmp_path / "charts" / "water.png"
    code, text, err = run_cli(
        capsys, "plot", out, "--stream", "cam-a", "--job", "job-two", "--output", target
    )
    assert code == 0, err
    assert f"wrote {target} (1 class, 4 frames)" in text
    with Image.open(target) as png:
        assert png.size == (1200, 600)
        assert len(pixels_of(np.asarray(png.convert("RGB")), CLASS0_RGB)) > 300
    assert not (out / "plots").exists()


def test_unknown_stream_or_job_lists_what_is_there(tmp_path: Path, capsys) -> None:
    out = write_outputs(tmp_path / "out")
    code, text, err = run_cli(capsys, "plot", out, "--stream", "cam-z")
    assert code == 2 and text == ""
    assert err.strip() == f"sanstream plot: no stream 'cam-z' in {out}; streams present: cam-a, cam-b"
    code, _, err = run_cli(capsys, "plot", out, "--stream", "cam-b", "--job", "job-x")
    assert code == 2 and "job 'job-x' wrote no rows for stream 'cam-b'; jobs that did: job-q" in err
    code, _, err = run_cli(capsys, "plot", out, "--stream", "cam-b", "--job", "../job-q")
    assert code == 2 and "--job '../job-q'" in err
    code, _, err = run_cli(capsys, "plot", tmp_path / "nowhere", "--stream", "cam-a")
    assert code == 2 and "does not exist" in err
    assert not (out / "plots").exists()


def test_lines_on_0_and_100_percent_are_drawn_inside_the_axes() -> None:
    """A class that fills the frame (100 %) or is absent (0 %) draws its line on the border: the y axis
    leaves a margin on both sides so the spines do not hide it, and keeps its ticks at 0-100 %."""
    import matplotlib.pyplot as plt

    pts = np.array([0.0, 0.5, 1.0])
    fractions = np.array([[1.0, 0.0], [1.0, 0.0], [0.5, 0.5]])
    fig = plot.figure(pts, ["road", "car"], fractions, "margins")
    try:
        ax = fig.axes[0]
        low, high = ax.get_ylim()
        assert (low, high) == pytest.approx((-plot.Y_MARGIN, 1 + plot.Y_MARGIN)) and plot.Y_MARGIN > 0
        ticks = ax.get_yticks()
        assert ticks.min() == 0.0 and ticks.max() == 1.0
        # In pixels: the 100 % and 0 % lines lie clear of the top and bottom spines by more than half
        # the line width (1.8 pt at 120 dpi = 3 px), so the whole line shows.
        box = ax.get_window_extent()
        top = ax.transData.transform((0.5, 1.0))[1]
        bottom = ax.transData.transform((0.5, 0.0))[1]
        assert box.y1 - top > 1.5 and bottom - box.y0 > 1.5
    finally:
        plt.close(fig)


@pytest.fixture
def region_out(tmp_path: Path) -> Path:
    """cam-a with the regions lane and sidewalk (see test_query_regions.REGIONS); cam-b without regions."""
    return write_regions(write_outputs(tmp_path / "out"))


def test_region_plot_draws_the_regions_fractions(region_out: Path, capsys, monkeypatch) -> None:
    drawn = []

    def recording_render(path, pts, names, fractions, title, ylabel="share of frame"):
        drawn.append((pts, names, fractions, title, ylabel))
        real_render(path, pts, names, fractions, title, ylabel)

    real_render = plot.render
    monkeypatch.setattr(plot, "render", recording_render)
    code, text, err = run_cli(capsys, "plot", region_out, "--stream", "cam-a", "--region", "sidewalk")
    assert code == 0, err
    target = region_out / "plots" / "job-q" / "cam-a" / "region-sidewalk.png"
    assert text == f"wrote {target} (region sidewalk, 2 classes, 3 frames)\n"
    assert not (region_out / "plots" / "job-q" / "cam-a.png").exists()  # the frame's plot keeps its file
    pts, names, fractions, title, ylabel = drawn[0]
    assert names == ["road", "car"] and pts.tolist() == [0.0, 0.5, 1.0]
    # sidewalk has 20 pixels: road 20, 20, 15 and car 0, 0, 5 of them (not the frame's 100, 50, 80)
    assert fractions.tolist() == [[1.0, 0.0], [1.0, 0.0], [0.75, 0.25]]
    assert title == "region sidewalk of stream cam-a — job job-q (3 frames)"
    assert ylabel == "share of region"
    with Image.open(target) as png:
        assert png.format == "PNG" and png.size == (1200, 600)
        image = np.asarray(png.convert("RGB"))
    road, car = pixels_of(image, CLASS0_RGB), pixels_of(image, CLASS1_RGB)
    assert len(road) > 300 and len(car) > 300
    assert np.median(road[:, 0]) < np.median(car[:, 0])  # road (75-100 %) above car (0-25 %)

    # the name matches case-insensitively; the stored spelling names the file and the title
    drawn.clear()
    code, text, err = run_cli(capsys, "plot", region_out, "--stream", "cam-a", "--region", "LANE")
    assert code == 0, err
    assert f"wrote {region_out / 'plots' / 'job-q' / 'cam-a' / 'region-lane.png'} (region lane," in text
    assert drawn[0][2].tolist() == [[1.0, 0.0], [0.5, 0.5], [0.25, 0.75]]  # lane: 40 pixels
    assert drawn[0][3].startswith("region lane of stream cam-a")


def test_region_plot_of_a_chosen_job_and_file(region_out: Path, capsys) -> None:
    write_outputs(region_out, {"cam-a": (["water"], [[10], [20]])}, job_id="job-two")
    write_regions(region_out, {"cam-a": (["water"], {"pier": [[7], [7]]})}, job_id="job-two")
    target = region_out / "charts" / "pier.png"
    code, text, err = run_cli(
        capsys,
        "plot",
        region_out,
        "--stream",
        "cam-a",
        "--job",
        "job-two",
        "--region",
        "pier",
        "--output",
        target,
    )
    assert code == 0, err
    assert text == f"wrote {target} (region pier, 1 class, 2 frames)\n"
    with Image.open(target) as png:
        assert png.size == (1200, 600)
    # job-q has no region pier: its regions are listed, not job-two's
    code, text, err = run_cli(
        capsys, "plot", region_out, "--stream", "cam-a", "--job", "job-q", "--region", "pier"
    )
    assert code == 2 and text == ""
    assert (
        err
        == "sanstream plot: no region 'pier' in stream 'cam-a' of job job-q; its regions: lane, sidewalk\n"
    )


def test_unknown_region_or_a_stream_without_regions_is_a_clear_error(region_out: Path, capsys) -> None:
    code, text, err = run_cli(capsys, "plot", region_out, "--stream", "cam-a", "--region", "road")
    assert code == 2 and text == ""
    assert (
        err
        == "sanstream plot: no region 'road' in stream 'cam-a' of job job-q; its regions: lane, sidewalk\n"
    )
    code, text, err = run_cli(capsys, "plot", region_out, "--stream", "cam-b", "--region", "lane")
    assert code == 2 and text == "" and "Traceback" not in err
    assert err.startswith("sanstream plot: stream 'cam-b' of job job-q has no regions")
    # an unknown stream or job reads as it does without --region
    code, _, err = run_cli(capsys, "plot", region_out, "--stream", "cam-z", "--region", "lane")
    assert code == 2
    assert err.strip() == f"sanstream plot: no stream 'cam-z' in {region_out}; streams present: cam-a, cam-b"
    code, _, err = run_cli(
        capsys, "plot", region_out, "--stream", "cam-a", "--job", "job-x", "--region", "lane"
    )
    assert code == 2 and "job 'job-x' wrote no rows for stream 'cam-a'; jobs that did: job-q" in err
    assert not (region_out / "plots").exists()


def test_region_file_names_are_safe_and_distinct() -> None:
    assert plot.region_file_name("lane-1") == "region-lane-1.png"
    odd = [plot.region_file_name(name) for name in ("a/b", "a b", "..", "Gate 3 (north)")]
    assert len(set(odd)) == len(odd)
    assert all("/" not in name and " " not in name and not name.startswith(".") for name in odd)
    assert odd[3].startswith("region-Gate_3_north-") and odd[3].endswith(".png")
