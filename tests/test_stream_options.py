"""Stream modes on the host (docs/semantics.md, "Stream filters"): ``--stream CH=MODE``, the
config file's ``"stream"`` object, ``heraldry.Settings(stream=...)``, their refusals (one line,
exit 2), and the summary of a filtered run (per channel counted, streamed, filtered, lost; from
the hardware counters)."""

import json
import subprocess
import sys

import pytest

from heraldry import protocol
from heraldry.host import cli
from heraldry.host.config import ConfigError
from heraldry.host.driver import Identity
from heraldry.host.tagger import Settings, settings_to_acquisition


def identity(capabilities):
    return Identity(magic=protocol.MAGIC, protocol=protocol.PROTOCOL_VERSION, gateware=0x100,
                    channels=4, rules=2, fine_bits=0, bin_fs=10_000_000, clock_hz=100_000_000,
                    capabilities=capabilities,
                    counters=protocol.RegisterMap(4, 2).counters.size)


FILTER = identity(protocol.CAPABILITY_STREAM_FILTER)
NO_FILTER = identity(0)


def acquisition(argv, ident=FILTER):
    args = cli.build_parser().parse_args(["acquire", "--board", "/dev/null"] + argv)
    return cli.acquisition_from_args(args, cli.board_from_identity(ident))[0]


def test_options_set_the_modes_and_the_gateware_registers():
    acq = acquisition(["--stream", "0=coincident", "--stream", "2=none"])
    assert acq.stream == ["coincident", "all", "none", "all"]
    config = acq.gateware_config()
    assert [config.stream[c] for c in range(4)] == [protocol.StreamMode.COINCIDENT,
                                                    protocol.StreamMode.ALL,
                                                    protocol.StreamMode.NONE,
                                                    protocol.StreamMode.ALL]
    assert acq.model_settings().stream == ("coincident", "all", "none", "all")
    assert acq.filtering and not acquisition([]).filtering


@pytest.mark.parametrize("argv,message", [
    (["--stream", "0=sometimes"], "--stream 'sometimes' must be one of all, coincident, none"),
    (["--stream", "4=none"], "no channel 4"),
    (["--stream", "1=none", "--stream", "1=all"], "channel 1 is given twice"),
    (["--stream", "none"], "--stream"),
])
def test_bad_options_are_refused_in_one_line(argv, message):
    with pytest.raises(ConfigError, match=message) as error:
        acquisition(argv)
    assert "\n" not in str(error.value)


def test_a_board_without_the_filter_refuses_anything_but_all():
    with pytest.raises(ConfigError, match="no stream filter"):
        acquisition(["--stream", "0=coincident"], NO_FILTER)
    assert acquisition(["--stream", "0=all"], NO_FILTER).stream == ["all"] * 4
    with pytest.raises(ConfigError, match="no stream filter"):
        settings_to_acquisition(Settings(stream={1: "none"}), NO_FILTER)
    acq, _ = settings_to_acquisition(Settings(stream={1: "none"}), FILTER)
    assert acq.stream == ["all", "none", "all", "all"]
    with pytest.raises(ConfigError, match="stream 'x' must be one of"):
        settings_to_acquisition(Settings(stream={1: "x"}), FILTER)
    with pytest.raises(ConfigError, match="no channel 7"):
        settings_to_acquisition(Settings(stream={7: "none"}), FILTER)


def test_config_file_stream_object_and_options_override_it(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"stream": {"0": "coincident", "3": "none"}}))
    acq = acquisition(["--config", str(path), "--stream", "3=all"])
    assert acq.stream == ["coincident", "all", "all", "all"]
    for bad, message in (({"stream": {"0": "some"}}, "stream 'some' of channel 0"),
                         ({"stream": ["coincident"]}, "must be an object"),
                         ({"stream": {"x": "none"}}, "stream channel 'x' is not a number"),
                         ({"stream": {"9": "none"}}, "stream channel 9: no such channel")):
        path.write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match=message):
            acquisition(["--config", str(path)])


def test_command_line_refusal_is_one_line_exit_2():
    run = subprocess.run([sys.executable, "-m", "heraldry.host.cli", "acquire", "--board",
                          "sim-inprocess", "--stream", "0=maybe"], capture_output=True,
                         text=True, timeout=120)
    if "No module named" in run.stderr:          # the CLI's entry point as installed
        run = subprocess.run(["heraldry", "acquire", "--board", "sim-inprocess", "--stream",
                              "0=maybe"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and "--stream" in run.stderr
    assert "Traceback" not in run.stderr


def test_summary_of_a_filtered_run_from_the_counters(tmp_path, capsys):
    """In-process core, pairs on 0/1 (efficiency 1) with dark counts everywhere: channel 0
    coincident, 2 none. Per channel streamed = singles - filtered - filter_dropped, and the tags
    received are exactly that (nothing lost); the printed line says it."""
    summary_path = tmp_path / "summary.json"
    status = cli.main(["acquire", "--board", "sim-inprocess", "--duration", "0.00002",
                       "--test-signal", "pairs", "--pair-rate", "3e6", "--efficiency", "1",
                       "--dark-rate", "3e6", "--stream", "0=coincident", "--stream", "2=none",
                       "--summary-json", str(summary_path)])
    printed = capsys.readouterr().out
    assert status == 0, printed
    summary = json.loads(summary_path.read_text())
    assert summary["stream"] == ["coincident", "all", "none", "all"]
    streamed = [s - f - d for s, f, d in zip(summary["singles"], summary["filtered"],
                                             summary["filter_dropped"])]
    assert summary["streamed_per_channel"] == streamed == summary["tags_per_channel"]
    assert summary["filtered"][2] == summary["singles"][2] > 0 and streamed[2] == 0
    assert summary["filtered"][1] == summary["filtered"][3] == 0
    assert 0 < streamed[0] < summary["singles"][0]
    # Channel 0 streams exactly its windows with another channel (W = 1 bin).
    assert streamed[0] == sum(v for p, v in summary["patterns"].items()
                              if int(p) & 1 and bin(int(p)).count("1") >= 2)
    assert summary["dropped"] == 0 and all(summary["checks"].values())
    assert "singles_recomputed_from_tags" not in summary["checks"]
    assert (f"stream (counted -> streamed / filtered / lost in the filter): ch0 coincident "
            f"{summary['singles'][0]} -> {streamed[0]} / {summary['filtered'][0]} / 0") in printed


def test_coincident_with_markers_is_refused():
    """A marker goes out in its own cycle, before tags the filter still holds: refused."""
    from heraldry.host.config import Acquisition
    with pytest.raises(ConfigError, match="cannot be combined with markers"):
        Acquisition(channels=3, roles=["detector", "detector", "reference"],
                    stream=["coincident", "all", "all"])
    with pytest.raises(ConfigError, match="cannot be combined with markers"):
        Acquisition(channels=3, roles=["detector", "detector", "sync"], sync_marker_every=10,
                    stream=["coincident", "all", "all"])
    # A sync without markers, or markers with only all/none modes, are fine.
    Acquisition(channels=3, roles=["detector", "detector", "sync"],
                stream=["coincident", "all", "all"])
    Acquisition(channels=3, roles=["detector", "detector", "reference"],
                stream=["none", "all", "all"])
