"""``heraldry acquire --plot DIR`` on a short ``--board sim`` run: valid PNGs, and the data each
plot draws equal to the measurement classes and to independent brute-force computations."""

import json

import numpy as np
import pytest
from PIL import Image

from heraldry import model
from heraldry.host import cli
from heraldry.host.measure import Correlation, CountRates
from heraldry.host.plots import G2_HALF_BINS, PLOT_FILES, g2_data, patterns_data, rates_data

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ARGS = ["acquire", "--board", "sim", "--duration", "0.003", "--channels", "4", "--seed", "5",
        "--pair-rate", "2e5", "--pair-delay", "30", "--window", "20", "--herald", "0b11"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plots")
    out, summary_path, plots = folder / "tags.npz", folder / "summary.json", folder / "img"
    status = cli.main(ARGS + ["--quiet", "--out", str(out), "--summary-json", str(summary_path),
                              "--plot", str(plots)])
    assert status == cli.EXIT_OK
    with open(summary_path) as f:
        summary = json.load(f)
    saved = np.load(out)
    tags = np.zeros(len(saved["time_ps"]), [("time_ps", np.int64), ("channel", np.uint8)])
    tags["time_ps"], tags["channel"] = saved["time_ps"], saved["channel"]
    acq, _ = cli.acquisition_from_args(cli.build_parser().parse_args(ARGS))
    return summary, tags, acq, plots


def test_pngs_written_and_listed(run):
    summary, _, _, folder = run
    expected = [str(folder / PLOT_FILES[k]) for k in ("rates", "g2", "patterns")]
    assert summary["plots"] == expected
    sizes = {"rates": (560, 280), "g2": (560, 280), "patterns": (480, 280)}
    for key, path in zip(("rates", "g2", "patterns"), expected):
        with open(path, "rb") as f:
            assert f.read(8) == PNG_SIGNATURE
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == sizes[key]
        assert (folder / PLOT_FILES[key]).stat().st_size < 100_000


def test_rates_data(run):
    summary, tags, acq, _ = run
    requested = int(round(summary["duration_s"] * 1e12))
    span = max(requested, int(tags["time_ps"].max()) + 1)
    edges, rates = rates_data(tags, 4, requested, acq.bin_ps)
    width = edges[1] - edges[0]
    assert width == 3_000 * acq.bin_ps         # 3 ms / 100, whole 10 ns bins
    assert edges[0] == 0 and edges[-1] >= span and edges[-2] < span
    assert np.all(np.diff(edges) == width)
    assert tags["time_ps"].min() >= 0
    inside = tags
    # Independent: a histogram per channel.
    for ch in range(4):
        hist, _ = np.histogram(inside["time_ps"][inside["channel"] == ch], bins=edges)
        assert np.array_equal(rates[ch] * (width * 1e-12), hist)
    # The measurement class gives the same trace.
    trace = CountRates(4, bin_ps=width).feed(inside).result().trace
    assert np.array_equal(rates[:, :trace.shape[1]] * (width * 1e-12), trace)
    assert not rates[:, trace.shape[1]:].any()
    assert rates.sum() * width * 1e-12 == pytest.approx(len(inside))
    assert len(inside) == summary["tags"]


def test_g2_data(run):
    summary, tags, acq, _ = run
    duration = int(round(summary["device_seconds"] * 1e12))
    g2 = g2_data(tags, acq.bin_ps, duration)
    t0 = tags["time_ps"][tags["channel"] == 0].astype(np.int64)
    t1 = tags["time_ps"][tags["channel"] == 1].astype(np.int64)
    edges = acq.bin_ps * np.arange(-G2_HALF_BINS, G2_HALF_BINS + 1)
    # Independent: every pair's difference, histogrammed (half-open bins, like the class).
    dt = (t1[None, :] - t0[:, None]).ravel()
    dt = dt[(dt >= edges[0]) & (dt < edges[-1])]
    expected = np.bincount((dt - edges[0]) // acq.bin_ps, minlength=2 * G2_HALF_BINS)
    assert np.array_equal(g2.edges_ps, edges)
    assert np.array_equal(g2.counts, expected)
    assert (g2.n1, g2.n2) == (len(t0), len(t1)) == tuple(summary["tags_per_channel"][:2])
    ref = Correlation(0, 1, bin_ps=acq.bin_ps, range_ps=G2_HALF_BINS * acq.bin_ps)
    assert np.array_equal(g2.g2, ref.feed(tags).result(duration).g2)
    # The pairs test signal with arm B 30 ns late: the peak sits in the 30 ns bin.
    assert edges[np.argmax(g2.counts)] == 30_000
    assert g2.g2.max() > 10


def test_patterns_data(run):
    summary, tags, acq, _ = run
    keys, counts = patterns_data(summary["patterns"])
    assert keys.tolist() == list(range(1, 16))
    assert counts.tolist() == [summary["patterns"][str(p)] for p in range(1, 16)]
    # Independent: the reference model's windows over the streamed tags (lossless run).
    assert summary["dropped"] == 0
    model_tags = np.zeros(len(tags), model.TAG_DTYPE)
    model_tags["time"] = tags["time_ps"] // acq.bin_ps
    model_tags["channel"] = tags["channel"]
    recomputed = model.counts_from_tags(model_tags, acq.model_settings())
    assert counts.tolist() == recomputed.patterns[1:].tolist()
    assert counts[0b11 - 1] > 0


def test_plot_folder_refused(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    status = cli.main(["acquire", "--duration", "1e-5", "--plot", str(blocker / "sub")])
    err = capsys.readouterr().err
    assert status == cli.EXIT_USAGE
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("heraldry: error: --plot")
