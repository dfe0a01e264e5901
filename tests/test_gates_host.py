"""Host side of sync, gates and reference markers: Settings -> Acquisition (ns to bins, roles),
the command line's --sync / --gate / --reference / --sync-marker-every and their one-line
refusals, and the refusal on a board without the gates capability."""

import dataclasses

import pytest

from heraldry import protocol
from heraldry.host import cli
from heraldry.host.config import ConfigError
from heraldry.host.tagger import VIRTUAL_BOARDS, Settings, settings_to_acquisition, sim_identity


def gates_identity(channels=5):
    identity = sim_identity(channels)
    return dataclasses.replace(identity,
                               capabilities=identity.capabilities | protocol.CAPABILITY_GATES)


def test_settings_become_roles_and_gates_in_bins():
    identity = gates_identity()
    bin_ns = identity.bin_ps / 1000
    acq, notes = settings_to_acquisition(Settings(
        sync=4, references=(3,), gates_ns={0: (4 * bin_ns, 24 * bin_ns), 1: (0, bin_ns)},
        sync_marker_every=10, heralds=("D0&D1",)), identity)
    assert notes == []
    assert acq.roles == ["detector", "detector", "detector", "reference", "sync"]
    assert acq.gates_bins == [(4, 24), (0, 1), None, None, None]
    assert acq.sync_marker_every == 10
    settings = acq.model_settings()
    assert settings.sync_channel == 4 and settings.channel[0].gate == (4, 24)
    config = acq.gateware_config()
    assert [int(config.gates.gate_width[c]) for c in range(5)] == [24, 1, 0, 0, 0]
    roles = config.gates.as_value().value      # 2 bits per channel, channel 0 lowest
    assert roles & 0b11 << 8 == protocol.Role.SYNC.value << 8
    assert roles & 0b11 << 6 == protocol.Role.REFERENCE.value << 6


@pytest.mark.parametrize("settings,fragment", [
    (Settings(gates_ns={0: (10, 20)}), "no channel is the sync"),
    (Settings(sync=4, gates_ns={4: (10, 20)}), "cannot have a gate"),
    (Settings(sync=4, gates_ns={0: (10, 0)}), "less than one bin"),
    (Settings(sync=4, gates_ns={0: (655340, 20)}), "offset . width must be 0..65535"),
    (Settings(sync=9), "no such channel"),
    (Settings(sync=4, references=(4,)), "already the sync"),
    (Settings(sync=4, heralds=("D0&D4",)), "rules take detectors only"),
    (Settings(sync_marker_every=3), "need a sync channel"),
    (Settings(sync=4, gates_ns={0: "wide"}), "is not .offset_ns, width_ns."),
])
def test_bad_values_are_refused_in_one_line(settings, fragment):
    with pytest.raises(ConfigError, match=fragment) as error:
        settings_to_acquisition(settings, gates_identity())
    assert "\n" not in str(error.value)


def test_a_board_without_gates_refuses_them():
    # the in-process board is built without gates (the Verilated one, "sim", with them)
    plain = sim_identity(5, VIRTUAL_BOARDS["sim-inprocess"])
    assert not plain.capabilities & protocol.CAPABILITY_GATES
    assert sim_identity(5).capabilities & protocol.CAPABILITY_GATES
    with pytest.raises(ConfigError, match="no sync, gates or reference inputs"):
        settings_to_acquisition(Settings(sync=4), plain)
    # plain settings still pass
    acq, _ = settings_to_acquisition(Settings(), plain)
    assert acq.roles == ["detector"] * 5 and not acq.gated


def test_a_board_with_references_alone_takes_references_only():
    """``CAPABILITY_REFERENCES`` (the iCEBreaker's build): a reference channel is accepted and
    reaches the gateware's role registers; sync, gates and sync markers are refused in one
    line that says what the board has."""
    identity = sim_identity(2)
    identity = dataclasses.replace(
        identity, capabilities=(identity.capabilities & ~protocol.CAPABILITY_GATES)
        | protocol.CAPABILITY_REFERENCES)
    acq, _ = settings_to_acquisition(Settings(references=(1,)), identity)
    assert acq.roles == ["detector", "reference"] and acq.references_only
    assert acq.roles_refusal(identity.capabilities) is None
    assert acq.gateware_config().gates.role[1] == protocol.Role.REFERENCE
    bin_ns = identity.bin_ps / 1000
    for settings in (Settings(sync=1), Settings(sync=1, sync_marker_every=2),
                     Settings(sync=1, gates_ns={0: (0, 4 * bin_ns)})):
        with pytest.raises(ConfigError, match="has reference inputs but no sync or gates") \
                as error:
            settings_to_acquisition(settings, identity)
        assert "\n" not in str(error.value)


@pytest.mark.parametrize("options,fragment", [
    (["--gate", "0:40"], "is not CH:OFFSET_NS:WIDTH_NS"),
    (["--gate", "x:40:20"], "channel 'x' is not a number"),
    (["--gate", "0:40:wide"], "width 'wide' is not a number"),
    (["--gate", "7:40:20"], "no channel 7"),
    (["--gate", "0:40:20", "--gate", "0:10:20"], "given twice"),
    (["--sync", "1", "--board", "sim-inprocess"], "no sync, gates or reference inputs"),
])
def test_command_line_refusals(options, fragment, capsys):
    status = cli.main(["acquire", "--channels", "2", "--duration", "1e-6", "--quiet"] + options)
    err = capsys.readouterr().err
    assert status == 2
    assert fragment in err and len(err.strip().splitlines()) == 1, err


def test_summary_has_roles_gated_out_and_attempts(capsys):
    """Without gates every channel is a detector, nothing is gated out, there is no sync."""
    import json
    status = cli.main(["acquire", "--board", "sim-inprocess", "--channels", "2",
                       "--duration", "2e-6", "--quiet"])
    summary = json.loads(capsys.readouterr().out)
    assert status == 0
    assert summary["roles"] == ["detector", "detector"]
    assert summary["gated_out"] == [0, 0] and summary["attempts"] is None
