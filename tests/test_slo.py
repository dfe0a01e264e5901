"""The alert and SLO rules of docs/ (prometheus-alerts.yml, slo-rules.yml) under Prometheus's own
rule checker and evaluator, ``promtool`` (Debian's ``prometheus`` package): ``promtool check
rules`` on both files, and ``promtool test rules`` on synthetic series (15 s scrapes, rules
evaluated each minute): the recording rules' CAR and accidental-subtracted herald rate for
rates chosen here, and for each SLO a burn that must page, one that must only open a ticket and
a healthy board that must not alert. Skipped, with the reason, where promtool is missing. In
the slow tier (``make test-slow``): a few seconds, but it needs the package."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
RULE_FILES = [DOCS / "prometheus-alerts.yml", DOCS / "slo-rules.yml"]
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")
# The slow tier: CI installs promtool (.ci/run) after the fast tier, before this one.
pytestmark = pytest.mark.slow

STEP_S = 15                     # scrape interval of the synthetic series
HOUR = 3600 // STEP_S           # samples per hour
FLOOR_HZ = 100.0                # the boards' --herald-floor
GOOD_HZ, BAD_HZ = 600.0, 40.0   # herald rates above and below it
HERALD_BUDGET, LINK_BUDGET = 0.01, 0.001    # docs/slo.md: objectives 99 % and 99.9 %


def _counter(increments):
    """promtool series notation for a counter with the given per-scrape increments."""
    out, value, i = [], 0.0, 0
    while i < len(increments):
        j = i
        while j + 1 < len(increments) and increments[j + 1] == increments[i]:
            j += 1
        # Values value + inc, ..., value + (j - i + 1) * inc: one segment.
        inc = increments[i]
        out.append(f"{value + inc:g}+{inc:g}x{j - i}")
        value += inc * (j - i + 1)
        i = j + 1
    return "0 " + " ".join(out)


def _series(name, labels, values):
    body = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{body}}}", "values": values}


def _const(value, n):
    return f"{value:g}x{n}"


def _alert(instance, severity, summary, runbook):
    return {"exp_labels": {"severity": severity, "instance": instance, "job": "heraldry"},
            "exp_annotations": {"summary": summary.format(instance=instance),
                                "runbook": runbook}}


def _promtool(*args, cwd):
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@needs_promtool
@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_promtool_check_rules(path, tmp_path):
    result = _promtool("check", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def _herald_series(instance, per_step_hz, n):
    labels = {"instance": instance, "job": "heraldry"}
    return [_series("heraldry_heralds_total", dict(labels, rule="0"),
                    _counter([hz * STEP_S for hz in per_step_hz])),
            _series("heraldry_herald_rate_floor_hz", labels, _const(FLOOR_HZ, n)),
            _series("heraldry_running", labels, _const(1, n))]


def _link_series(instance, down_share, n):
    labels = {"instance": instance, "job": "heraldry"}
    down = STEP_S * down_share
    return [_series("heraldry_link_down_seconds_total", labels, _counter([down] * n)),
            _series("heraldry_link_up_seconds_total", labels, _counter([STEP_S - down] * n))]


def _latency_series(instance, late_share, n):
    """Herald publication latency histogram: 400 heralds/s, ``late_share`` of them after 0.5 s."""
    labels = {"instance": instance, "job": "heraldry"}
    per_step = 400 * STEP_S
    name = "heraldry_herald_publish_latency_seconds"
    return [_series(f"{name}_bucket", dict(labels, le="0.5"),
                    _counter([per_step * (1 - late_share)] * n)),
            _series(f"{name}_count", labels, _counter([per_step] * n))]


@needs_promtool
def test_burn_rate_alerts_page_ticket_and_stay_quiet(tmp_path):
    n = 8 * HOUR
    # Herald success. "page": good for an hour, then below the floor (a misaligned fiber):
    # every budget window burns. "ticket": 3 minutes below the floor in every 30 (3 or 4 of
    # every 30 evaluations see a 1 min rate below the floor: about 11 %, above 6 times the
    # budget, below 14.4 times, in every window). "healthy": always above.
    page = [GOOD_HZ] * HOUR + [BAD_HZ] * (n - HOUR)
    block = [GOOD_HZ] * (27 * 60 // STEP_S) + [BAD_HZ] * (3 * 60 // STEP_S)
    ticket = (block * (n // len(block) + 1))[:n]
    series = (_herald_series("page", page, n) + _herald_series("ticket", ticket, n)
              + _herald_series("healthy", [GOOD_HZ] * n, n))
    # Link availability: down 3 % of the time (over 14.4 x 0.1 %), 1 % (between 6 and 14.4
    # times), 0.03 % (inside the budget).
    series += (_link_series("page", 0.03, n) + _link_series("ticket", 0.01, n)
               + _link_series("healthy", 0.0003, n))
    # Herald latency: 30 % of heralds late (over 14.4 x 1 %), 10 % (between 6 and 14.4 times),
    # 0.5 % (inside the budget).
    series += (_latency_series("page", 0.3, n) + _latency_series("ticket", 0.1, n)
               + _latency_series("healthy", 0.005, n))
    summaries = {
        "Herald": "heraldry board {instance}: herald rate below its floor, burning the month's "
                  "budget in ",
        "Link": "heraldry board {instance}: link down too often, burning the month's budget in ",
        "Latency": "heraldry board {instance}: heralds published late, burning the month's "
                   "budget in "}

    def alerts(name, instances, severity, days):
        summary = summaries[name[len("Heraldry"):name.index("Budget")]] + days
        return {"eval_time": "7h", "alertname": name,
                "exp_alerts": [_alert(i, severity, summary, f"docs/slo.md#{name.lower()}")
                               for i in instances]}
    tests = [{"interval": f"{STEP_S}s", "input_series": series, "alert_rule_test": [
        alerts("HeraldryHeraldBudgetBurnFast", ["page"], "page", "2 days"),
        alerts("HeraldryHeraldBudgetBurnSlow", ["page", "ticket"], "ticket", "5 days"),
        alerts("HeraldryLinkBudgetBurnFast", ["page"], "page", "2 days"),
        alerts("HeraldryLinkBudgetBurnSlow", ["page", "ticket"], "ticket", "5 days"),
        alerts("HeraldryLatencyBudgetBurnFast", ["page"], "page", "2 days"),
        alerts("HeraldryLatencyBudgetBurnSlow", ["page", "ticket"], "ticket", "5 days"),
    ]}]
    _run_tests(tmp_path, tests)


@needs_promtool
def test_recording_rules_car_and_net_herald_rate(tmp_path):
    # Arms at 10 and 20 kHz with a 2.5 ns window: accidentals 1e4 * 2e4 * 2 * 2.5e-9 = 1 Hz
    # (a window opens at either arm's event); 400 Hz of pattern 0b0011: CAR 400; heralds at
    # 401 Hz: 400 Hz once the accidentals are subtracted. Klyshko efficiencies 399 / 2e4 and
    # 399 / 1e4.
    n = HOUR
    labels = {"instance": "b", "job": "heraldry"}
    series = [
        _series("heraldry_detections_total", dict(labels, channel="0"),
                _counter([10_000 * STEP_S] * n)),
        _series("heraldry_detections_total", dict(labels, channel="1"),
                _counter([20_000 * STEP_S] * n)),
        _series("heraldry_coincidence_window_seconds", labels, _const(2.5e-9, n)),
        _series("heraldry_coincidences_total", dict(labels, pattern="3"),
                _counter([400 * STEP_S] * n)),
        _series("heraldry_heralds_total", dict(labels, rule="0"), _counter([401 * STEP_S] * n)),
    ]

    def expect(expr, value):
        return {"expr": f"round({expr}, 0.001)", "eval_time": "30m",
                "exp_samples": [{"labels": '{instance="b", job="heraldry"}', "value": value}]}
    tests = [{"interval": f"{STEP_S}s", "input_series": series, "promql_expr_test": [
        expect("heraldry:pair01_accidental_rate_hz:rate1m", 1),
        expect("heraldry:pair01_car:rate1m", 400),
        expect("heraldry:herald_net_rate_hz:rate1m", 400),
        expect("heraldry:herald_rate_hz:rate1m", 401),
        # Klyshko: (400 - 1) Hz of true pairs over the other arm's 20 and 10 kHz.
        expect("heraldry:arm0_klyshko_efficiency:rate1m", 0.02),
        expect("heraldry:arm1_klyshko_efficiency:rate1m", 0.04),
    ]}]
    _run_tests(tmp_path, tests)


@needs_promtool
def test_recording_rules_coincidence_peak_width(tmp_path):
    """The peak's width rules on figures worked out by hand: arms at 10 and 15 kHz, range
    100 ns: accidental pairs 1e4 * 1.5e4 * 2e-7 = 30 Hz, evenly spread (sum of delays 0, sum of
    squares 30 * (100 ns)^2 / 3 = 1e-13 s^2 a second); the peak 1000 pairs a second at a mean
    of 20 ns with a standard deviation of 5 ns (sum 2e-5 s, sum of squares 1000 * (25 + 400)
    ns^2 = 4.25e-13 s^2). The shifted sum adds 100 ns per pair: 2e-5 + 1030 * 1e-7 s."""
    n = HOUR
    labels = {"instance": "b", "job": "heraldry"}
    series = [
        _series("heraldry_detections_total", dict(labels, channel="0"),
                _counter([10_000 * STEP_S] * n)),
        _series("heraldry_detections_total", dict(labels, channel="1"),
                _counter([15_000 * STEP_S] * n)),
        _series("heraldry_pair_delay_range_seconds", labels, _const(100e-9, n)),
        _series("heraldry_pair_delay_seconds_bucket", dict(labels, le="+Inf"),
                _counter([1030 * STEP_S] * n)),
        _series("heraldry_pair_delay_shifted_seconds_total", labels,
                _counter([(2e-5 + 1030 * 1e-7) * STEP_S] * n)),
        _series("heraldry_pair_delay_seconds_squared_total", labels,
                _counter([(1e-13 + 4.25e-13) * STEP_S] * n)),
    ]

    def expect(expr, value):
        return {"expr": f"round({expr})", "eval_time": "30m",
                "exp_samples": [{"labels": '{instance="b", job="heraldry"}', "value": value}]}
    tests = [{"interval": f"{STEP_S}s", "input_series": series, "promql_expr_test": [
        expect("heraldry:pair01_delay_accidentals_hz:rate1m", 30),
        expect("heraldry:pair01_delay_peak_hz:rate1m", 1000),
        expect("heraldry:pair01_delay_mean_seconds:rate1m * 1e12", 20_000),      # ps
        expect("heraldry:pair01_delay_stddev_seconds:rate1m * 1e12", 5_000),
    ]}]
    _run_tests(tmp_path, tests)


def _run_tests(tmp_path, tests):
    # JSON is YAML: promtool reads the test file as written here.
    path = tmp_path / "slo-test.yml"
    path.write_text(json.dumps({"rule_files": [str(p) for p in RULE_FILES],
                                "evaluation_interval": "1m", "tests": tests}, indent=1))
    result = _promtool("test", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_coincidence_peak_and_car_alerts(tmp_path):
    """heraldry:pair01_delay_seconds:median1m is the median of the pair-delay histogram (here
    every pair in the bucket (25, 35] ns but a tenth below it, in (15, 25]: rank 0.5 lies 4/9
    into the upper bucket: 25 + 10 * 4/9 ns); the peak alert compares it with a quarter of the
    window, the CAR alert the CAR with --car-floor."""
    from heraldry.host.serve import PAIR_DELAY_BUCKETS_S
    n = HOUR
    labels = {"instance": "b", "job": "heraldry"}
    series = []
    for bound in PAIR_DELAY_BUCKETS_S:
        below = 1000 if bound > 20e-9 else 0      # pairs per second at or below the bound
        below += 9000 if bound > 30e-9 else 0
        series.append(_series("heraldry_pair_delay_seconds_bucket",
                              dict(labels, le=f"{bound:g}"), _counter([below * STEP_S] * n)))
    series.append(_series("heraldry_pair_delay_seconds_bucket", dict(labels, le="+Inf"),
                          _counter([10_000 * STEP_S] * n)))
    # CAR: arms at 10 and 20 kHz, window 40 ns: accidentals 16 Hz; 800 Hz of pattern 3: CAR 50.
    series += [
        _series("heraldry_detections_total", dict(labels, channel="0"),
                _counter([10_000 * STEP_S] * n)),
        _series("heraldry_detections_total", dict(labels, channel="1"),
                _counter([20_000 * STEP_S] * n)),
        _series("heraldry_coincidences_total", dict(labels, pattern="3"),
                _counter([800 * STEP_S] * n)),
        _series("heraldry_coincidence_window_seconds", labels, _const(40e-9, n)),
        _series("heraldry_car_floor", labels, _const(60, n)),
        _series("heraldry_running", labels, _const(1, n)),
    ]
    expected_ns = 25 + 10 * 4 / 9
    summary = "heraldry board b: {}"
    tests = [{"interval": f"{STEP_S}s", "input_series": series,
              "promql_expr_test": [{
                  "expr": "round(heraldry:pair01_delay_seconds:median1m * 1e12)",
                  "eval_time": "30m",
                  "exp_samples": [{"labels": '{instance="b", job="heraldry"}',
                                   "value": round(expected_ns * 1000)}]}],
              "alert_rule_test": [
                  {"eval_time": "30m", "alertname": name, "exp_alerts": [{
                      "exp_labels": {"severity": "ticket", "instance": "b", "job": "heraldry"},
                      "exp_annotations": {"summary": summary.format(text),
                                          "runbook": f"docs/slo.md#{name.lower()}",
                                          "description": description}}]}
                  for name, text, description in (
                      ("HeraldryCoincidencePeakShift",
                       "coincidence peak a quarter of the window off centre",
                       "The arms' relative delay (clock skew, a fiber or cable changed) has "
                       "moved; coincidences are lost once it leaves the window. Needs "
                       "slo-rules.yml (the peak recording rule)."),
                      ("HeraldryCarLow", "coincidence-to-accidental ratio below its floor",
                       "Dark counts or stray light on an arm: the heralds are more and more "
                       "accidental. Needs slo-rules.yml (the CAR recording rule)."))]}]
    _run_tests(tmp_path, tests)
