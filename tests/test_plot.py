"""plot: both plots render to valid, non-trivial PNGs; refusals; the missing-matplotlib message."""

from __future__ import annotations

import re
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ROOT, run_cli
from synthetic import make_report, write

from shmhpc.errors import SpecError
from shmhpc.plot import MISSING, plot_scaling, plot_timeline

pytest.importorskip("matplotlib", reason="the plot extra is not installed (pip install '.[plot]')")


def png_size(path: Path) -> tuple[int, int]:
    """Check the PNG signature and the IHDR chunk; return (width, height)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height = struct.unpack(">II", data[16:24])
    assert len(data) > 10_000, f"suspiciously small image: {len(data)} bytes"
    return width, height


def sweep_like(ceiling: float | None = None) -> list[tuple[str, dict]]:
    out = []
    for policy, base in (("none", 0.030), ("compact", 0.024)):
        for w in (1, 2, 4):
            times = [base / w * f for f in (1.0, 1.05, 0.97, 1.02, 0.99)]
            out.append((f"{policy}-{w}.json", make_report(policy, times, workers=w, ceiling_gbps=ceiling)))
    return out


def test_scaling_plot_renders(tmp_path):
    out = tmp_path / "scaling.png"
    notes = plot_scaling(sweep_like(ceiling=12.5), out)
    assert notes == []
    assert png_size(out) == (960, 600)  # 8 × 5 inches at 120 dpi


def test_scaling_plot_pixels_are_not_blank(tmp_path):
    import matplotlib.image

    out = tmp_path / "scaling.png"
    plot_scaling(sweep_like(), out)
    img = matplotlib.image.imread(out)
    assert img.shape[:2] == (600, 960)
    assert img[..., :3].std() > 0.05  # lines, text and axes, not an empty canvas


def test_timeline_plot_renders(tmp_path):
    out = tmp_path / "timeline.png"
    notes = plot_timeline([("one.json", make_report("compact", workers=4))], out)
    assert notes == []
    width, height = png_size(out)
    assert width == 1080 and height > 300


def test_reports_without_data_are_left_out_with_a_note(tmp_path):
    reports = [*sweep_like(), ("failed.json", {**make_report("none", status="failed"), "bandwidth": None})]
    notes = plot_scaling(reports, tmp_path / "s.png", force=True)
    assert notes == ["failed.json: left out (status failed, 0 GB/s values)"]
    with pytest.raises(SpecError, match="no report has per-chunk timings"):
        plot_timeline([("x.json", {**make_report(), "workers": []})], tmp_path / "t.png")


@pytest.mark.slow
def test_cli_plots_a_directory_one_report_and_both(tmp_path):
    d = tmp_path / "reports"
    for name, rep in sweep_like():
        write(d / name, rep)
    out = run_cli("plot", str(d), "-o", str(tmp_path / "dir.png"))
    assert out.returncode == 0, out.stderr
    assert "GB/s against workers, 6 reports" in out.stdout
    png_size(tmp_path / "dir.png")

    one = run_cli("plot", str(d / "compact-2.json"), "-o", str(tmp_path / "one.png"))
    assert one.returncode == 0 and "per-worker timeline, 1 report" in one.stdout
    png_size(tmp_path / "one.png")

    both = run_cli(
        "plot", str(d / "none-1.json"), str(d / "compact-1.json"), "--kind", "both", "-o", str(tmp_path / "pair.png")
    )
    assert both.returncode == 0, both.stderr
    png_size(tmp_path / "pair.png")
    png_size(tmp_path / "pair-timeline.png")


def test_cli_refuses_to_mix_hosts_unless_forced(tmp_path):
    a = write(tmp_path / "a.json", make_report("none"))
    b = write(tmp_path / "b.json", make_report("compact", hostname="elsewhere"))
    out = run_cli("plot", str(a), str(b), "-o", str(tmp_path / "x.png"))
    assert out.returncode == 2 and "error: plot: different hosts (host.hostname)" in out.stderr
    assert not (tmp_path / "x.png").exists()
    forced = run_cli("plot", str(a), str(b), "-o", str(tmp_path / "x.png"), "--force")
    assert forced.returncode == 0 and "note: forced: different hosts" in forced.stderr


def test_cli_bad_output_format_and_bad_input(tmp_path):
    a = write(tmp_path / "a.json", make_report("none"))
    out = run_cli("plot", str(a), "-o", str(tmp_path / "x.nope"))
    assert out.returncode == 2 and "error: -o: " in out.stderr and "Traceback" not in out.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    none = run_cli("plot", str(empty), "-o", str(tmp_path / "y.png"))
    assert none.returncode == 2 and "holds no report" in none.stderr


def test_missing_matplotlib_names_the_extra(tmp_path):
    a = write(tmp_path / "a.json", make_report("none"))
    code = textwrap.dedent(f"""
        import sys

        class NoMatplotlib:
            def find_spec(self, name, path=None, target=None):
                if name == "matplotlib" or name.startswith("matplotlib."):
                    raise ImportError("blocked for the test: " + name)
                return None

        sys.meta_path.insert(0, NoMatplotlib())
        from shmhpc.cli import main
        sys.exit(main(["plot", {str(a)!r}, "-o", {str(tmp_path / "x.png")!r}]))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: {MISSING}"
    assert "pip install 'shmhpc[plot]'" in out.stderr
    assert not (tmp_path / "x.png").exists()


def test_the_plot_extra_is_declared():
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^plot = \["matplotlib>=3\.5"\]', text, re.M)
    test_extra = re.search(r"^test = \[(.*?)\]", text, re.M | re.S)
    assert test_extra and '"matplotlib>=3.5"' in test_extra.group(1)  # CI installs .[test]: plot tests run
