"""Alerts: thresholds, for_s, hysteresis, below rules, events open at stream end, replay after a restored
state giving exactly the undisturbed run's events, and validation messages under their field paths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.alerts import AlertEvent, AlertRule, AlertState, evaluate, finish, parse_alerts, rule_value
from pipeline.jobs.checks import Checker
from pipeline.regions import RegionAreas

Sample = tuple[float, float, float]  # pts, wall time, value


def samples(values: list[float], step: float = 1.0, wall0: float = 1_700_000_000.0) -> list[Sample]:
    """One sample per `step` seconds of stream time; the wall clock runs 0.25 s behind, to tell them apart."""
    return [(i * step, wall0 + i * step + 0.25, v) for i, v in enumerate(values)]


def run(rule: AlertRule, series: list[Sample], state: AlertState | None = None) -> list[AlertEvent]:
    """Every record of a whole stream: each frame's, then `finish`'s."""
    state = state or AlertState()
    events = [event for pts, wall, value in series for event in evaluate(rule, state, pts, wall, value)]
    if series:
        events += finish(rule, state, series[-1][0], series[-1][1])
    return events


def parse(value, region_names=("lane",), class_names=None):
    c = Checker(Path("/specs"))
    return parse_alerts(c, value, "streams[0].alerts", region_names, class_names), c.problems


# ------------------------------------------------------------------------------------------- evaluation


def test_above_opens_at_once_and_closes_when_back_at_the_threshold():
    rule = AlertRule("wet", "water", above=0.2)
    events = run(rule, samples([0.1, 0.2, 0.3, 0.5, 0.25, 0.2, 0.1]))
    opened, closed = events
    assert (opened.status, opened.start_pts, opened.at_pts, opened.end_pts, opened.peak) == (
        "open",
        2,
        2,
        None,
        0.3,
    )
    assert opened.event_id == closed.event_id == "wet:2.0"
    assert (closed.status, closed.start_pts, closed.end_pts, closed.peak) == ("closed", 2, 5, 0.5)
    assert closed.start_wall == 1_700_000_002.25 and closed.end_wall == 1_700_000_005.25
    assert (closed.rule, closed.region, closed.class_name) == ("wet", None, "water")


def test_value_equal_to_the_threshold_does_not_hold():
    assert run(AlertRule("wet", "water", above=0.2), samples([0.2, 0.2, 0.2])) == []
    assert run(AlertRule("dry", "water", below=0.2), samples([0.2, 0.2, 0.2])) == []


def test_a_condition_shorter_than_for_s_opens_nothing():
    rule = AlertRule("wet", "water", above=0.2, for_s=3)
    assert run(rule, samples([0.5, 0.5, 0.5, 0.1, 0.5, 0.5, 0.5, 0.0])) == []  # 2 s, then 2 s again


def test_for_s_opens_once_the_condition_held_that_long_with_its_start_where_it_began():
    rule = AlertRule("wet", "water", above=0.2, for_s=3)
    opened, closed = run(rule, samples([0.1, 0.5, 0.9, 0.5, 0.4, 0.6, 0.0], step=1.0))
    assert (opened.start_pts, opened.at_pts, opened.peak) == (1, 4, 0.9)
    assert (closed.start_pts, closed.end_pts, closed.peak) == (1, 6, 0.9)


def test_hysteresis_keeps_an_event_open_until_the_clear_threshold():
    rule = AlertRule("wet", "water", above=0.5, clear=0.2)
    events = run(rule, samples([0.6, 0.4, 0.3, 0.55, 0.25, 0.2, 0.45, 0.6]))
    assert [(e.status, e.start_pts, e.end_pts) for e in events] == [
        ("open", 0, None),
        ("closed", 0, 5),  # 0.4, 0.3 and 0.25 kept it open
        ("open", 7, None),  # 0.45 after closing is not above 0.5: nothing until 0.6
        ("ended", 7, 7),  # finish: still open at the stream's end
    ]
    without = run(AlertRule("wet", "water", above=0.5), samples([0.6, 0.4, 0.3, 0.55, 0.25]))
    assert [(e.status, e.start_pts) for e in without] == [
        ("open", 0),
        ("closed", 0),
        ("open", 3),
        ("closed", 3),
    ]


def test_below_rule_tracks_the_minimum_and_clears_at_or_above():
    rule = AlertRule("bare", "grass", below=0.3, clear=0.4, for_s=1)
    opened, closed = run(rule, samples([0.5, 0.2, 0.1, 0.35, 0.39, 0.4, 0.1]))
    assert (opened.start_pts, opened.at_pts, opened.peak) == (1, 2, 0.1)
    assert (closed.end_pts, closed.peak) == (5, 0.1)


def test_event_open_at_stream_end_is_reported_ended_once():
    rule = AlertRule("wet", "water", above=0.2, region="lane")
    state = AlertState()
    events = [
        e for pts, wall, value in samples([0.1, 0.3, 0.6]) for e in evaluate(rule, state, pts, wall, value)
    ]
    (record,) = finish(rule, state, 2.0, 99.0)
    assert (record.status, record.end_pts, record.end_wall, record.peak) == ("ended", 2.0, 99.0, 0.6)
    assert (record.at_pts, record.at_wall, record.region) == (2.0, 99.0, "lane")
    assert record.event_id == events[0].event_id and record.start_pts == events[0].start_pts == 1.0
    assert finish(rule, state, 2.0, 99.0) == []  # the stream's end settles the event: never twice
    assert not state.is_open and state.last_pts == 2.0


def test_finish_reports_nothing_while_idle_or_pending():
    rule = AlertRule("wet", "water", above=0.2, for_s=10)
    state = AlertState()
    evaluate(rule, state, 0.0, 0.0, 0.9)
    assert finish(rule, state, 0.0, 0.0) == [] and finish(rule, AlertState(), 0.0, 0.0) == []


def test_frames_not_after_the_last_one_are_ignored():
    rule = AlertRule("wet", "water", above=0.2)
    state = AlertState()
    assert len(evaluate(rule, state, 5.0, 0.0, 0.9)) == 1
    assert evaluate(rule, state, 5.0, 0.0, 0.0) == [] and evaluate(rule, state, 4.0, 0.0, 0.0) == []
    assert state.is_open and state.last_pts == 5.0
    with pytest.raises(ValueError, match="finite"):
        evaluate(rule, state, 6.0, 0.0, float("nan"))


RULES = [
    AlertRule("a", "water", above=0.5),
    AlertRule("b", "water", above=0.5, for_s=2.5, clear=0.3),
    AlertRule("c", "water", below=0.4, for_s=1.0),
    AlertRule("d", "water", below=0.2, clear=0.6, for_s=0.5),
]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_replay_after_a_restored_state_gives_the_undisturbed_events(rule: AlertRule):
    """Split the stream after every frame: store the state (through JSON), restore it, and replay from up
    to three frames before the split (frames at or before the commit come again after a crash)."""
    rng = np.random.default_rng(7)
    values = np.clip(np.cumsum(rng.normal(0, 0.2, 60)) % 1.0, 0, 1)
    pts = np.cumsum(rng.choice([0.5, 1.0, 1.5], 60))  # uneven sampling
    series = [(float(p), 1e9 + float(p), float(v)) for p, v in zip(pts, values, strict=True)]
    undisturbed = run(rule, series)
    assert any(e.status == "closed" for e in undisturbed)  # the series exercises the rule
    for split in range(len(series) + 1):
        state = AlertState()
        before = [e for s in series[:split] for e in evaluate(rule, state, *s)]
        restored = AlertState.from_dict(json.loads(json.dumps(state.to_dict())))
        assert restored == state
        for replay_from in {max(0, split - 3), split}:
            resumed = AlertState.from_dict(json.loads(json.dumps(state.to_dict())))
            assert before + run(rule, series[replay_from:], resumed) == undisturbed, (split, replay_from)


def test_state_from_dict_refuses_anything_else():
    good = AlertState(last_pts=3, start_pts=1.0, start_wall=2.0, peak=0.5, is_open=True).to_dict()
    assert AlertState.from_dict(good) == AlertState(3.0, 1.0, 2.0, 0.5, True)
    for bad in ({}, {**good, "extra": 1}, {**good, "is_open": 1}, {**good, "peak": "0.5"}, [1]):
        with pytest.raises(ValueError, match="not a stored alert state"):
            AlertState.from_dict(bad)  # type: ignore[arg-type]


def test_rule_value_from_the_region_or_the_whole_frame():
    frame = np.array([30, 10, 60])
    regions = {"lane": RegionAreas(pixels=np.array([5, 5, 0]), total=10)}
    classes = ["road", "water", "sky"]
    assert rule_value(AlertRule("w", "water", above=0.1), classes, frame, regions) == 0.1
    assert rule_value(AlertRule("w", "Water", above=0.1, region="lane"), classes, frame, regions) == 0.5
    assert rule_value(AlertRule("w", "boat", above=0.1), classes, frame, regions) is None


# ------------------------------------------------------------------------------------------- validation


def test_parse_valid_rules_and_round_trip():
    value = [
        {"name": "flooded_lane", "region": "lane", "class": "water", "above": 0.2, "for_s": 30, "clear": 0.1},
        {"name": "no_grass", "class": "Grass", "below": 0.05},
    ]
    rules, problems = parse(value, class_names=["water", "grass"])
    assert problems == []
    assert rules[0] == AlertRule("flooded_lane", "water", above=0.2, region="lane", for_s=30.0, clear=0.1)
    assert rules[1] == AlertRule("no_grass", "grass", below=0.05)  # spelt as the vocabulary spells it
    assert parse([r.to_dict() for r in rules])[0] == rules
    assert parse(None) == ((), [])


BASE_RULE = {"name": "wet", "class": "water", "above": 0.2}


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        ({"region": "lame"}, "streams[0].alerts[0].region", "did you mean 'lane'?"),
        ({"region": "gate"}, "streams[0].alerts[0].region", "the stream's regions: lane"),
        ({"above": 1.5}, "streams[0].alerts[0].above", "within 0..1"),
        ({"above": -0.1}, "streams[0].alerts[0].above", "must be >= 0"),
        ({"above": "20%"}, "streams[0].alerts[0].above", "must be a number"),
        ({"above": 1}, "streams[0].alerts[0].above", "could never open"),
        ({"above": None, "below": 0}, "streams[0].alerts[0].below", "could never open"),
        ({"below": 0.1}, "streams[0].alerts[0]", "exactly one of above and below, not both"),
        ({"above": None}, "streams[0].alerts[0]", "exactly one of above and below"),
        ({"clear": 0.3}, "streams[0].alerts[0].clear", "must be at or below above (0.2)"),
        (
            {"above": None, "below": 0.3, "clear": 0.2},
            "streams[0].alerts[0].clear",
            "at or above below (0.3)",
        ),
        ({"for_s": -1}, "streams[0].alerts[0].for_s", "must be >= 0"),
        ({"name": ""}, "streams[0].alerts[0].name", "non-empty string"),
        ({"class": 3}, "streams[0].alerts[0].class", "non-empty string"),
        ({"class": "watr"}, "streams[0].alerts[0].class", "did you mean 'water'?"),
        ({"threshold": 0.2}, "streams[0].alerts[0].threshold", "unknown key"),
    ],
)
def test_validation_errors_name_the_field(change: dict, path: str, message: str):
    rule = {k: v for k, v in {**BASE_RULE, **change}.items() if v is not None}
    rules, problems = parse([rule], class_names=["water", "road"])
    assert rules == ()
    assert any(p == path and message in m for p, m in problems), problems


def test_missing_fields_duplicates_and_no_regions():
    value = [
        {"above": 0.2},
        BASE_RULE,
        {**BASE_RULE, "name": "WET"},
        {**BASE_RULE, "name": "x", "region": "lane"},
        {**BASE_RULE, "name": "X"},  # x is broken, but its name is taken all the same
    ]
    rules, problems = parse(value, region_names=())
    assert [r.name for r in rules] == ["wet"]
    assert problems == [
        ("streams[0].alerts[0].name", "is required"),
        ("streams[0].alerts[0].class", "is required"),
        ("streams[0].alerts[2].name", "'WET' duplicates streams[0].alerts[1].name"),
        (
            "streams[0].alerts[3].region",
            "names region 'lane', but the stream defines no regions (leave it out for the whole frame)",
        ),
        ("streams[0].alerts[4].name", "'X' duplicates streams[0].alerts[3].name"),
    ]
    assert parse({"name": "x"})[1] == [
        ("streams[0].alerts", "must be a list of alert rules, got dict {'name': 'x'}")
    ]
