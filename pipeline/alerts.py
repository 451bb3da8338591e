"""Alerts: a class's share of a region (or of the whole frame) staying above or below a threshold.

    alerts:
      - {name: flooded_lane, region: lane, class: water, above: 0.2, for_s: 30, clear: 0.1}

A rule's value on a frame is the fraction of the region's pixels labelled with its class. The condition
holds while the value is strictly above `above` (or strictly below `below`). An event OPENS once the
condition has held without a break for `for_s` seconds of stream time, and its start is the frame where
the condition began; it CLOSES at the first frame whose value is back at or past `clear` (at or below it for
`above`, at or above it for `below`). `clear` defaults to the trigger threshold; a `clear` further from the
trigger (hysteresis) keeps a value hovering around the threshold from opening and closing an event on every
frame. Before an event opens only the trigger matters: a condition that breaks before `for_s` opens nothing.

Everything runs on the stream's own timeline (`pts_seconds`), never the wall clock, so a file analysed
twice, or a stream replayed after a crash, gives the same events. The evaluator is a pure function of a
small `AlertState` and the frame: stored with a commit (`to_dict`) and restored (`from_dict`), the state
lets a resumed stream replay the frames after the committed one and emit exactly the events an undisturbed
run would have. A frame whose pts is not after the state's last one is ignored, in every run alike, so
frames replayed from before the commit change nothing. (Wall times in events are copied from the frames; a
replayed file's frames carry their new decode times.)
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import numpy as np

from pipeline.jobs.checks import Checker, join_path, show
from pipeline.regions import RegionAreas

MAX_ALERTS = 100
_KEYS = ("name", "region", "class", "above", "below", "for_s", "clear")

Status = Literal["open", "closed", "ended"]


@dataclass(frozen=True)
class AlertRule:
    """When to raise an alert on one stream.

    Attributes:
        name: unique within the stream; part of every event id.
        class_name: a class name of the stream's vocabulary (its first synonym).
        above, below: exactly one is set: the condition holds while the value is > above (or < below).
        region: a region name of the stream, or None for the whole frame.
        for_s: seconds of stream time the condition must hold before an event opens (>= 0).
        clear: the value at or past which an open event closes; None: the trigger threshold.
    """

    name: str
    class_name: str
    above: float | None = None
    below: float | None = None
    region: str | None = None
    for_s: float = 0.0
    clear: float | None = None

    def __post_init__(self) -> None:
        if (self.above is None) == (self.below is None):
            raise ValueError(f"alert {self.name!r}: give exactly one of above and below")

    @property
    def threshold(self) -> float:
        threshold = self.above if self.above is not None else self.below
        assert threshold is not None  # __post_init__ saw to it
        return threshold

    @property
    def clear_threshold(self) -> float:
        return self.clear if self.clear is not None else self.threshold

    def holds(self, value: float) -> bool:
        """Whether the condition holds for a value (strictly past the trigger threshold)."""
        return value > self.threshold if self.above is not None else value < self.threshold

    def cleared(self, value: float) -> bool:
        """Whether a value closes an open event (at or back past the clear threshold)."""
        return value <= self.clear_threshold if self.above is not None else value >= self.clear_threshold

    def to_dict(self) -> dict[str, Any]:
        """The job-spec form (`class`, not `class_name`), which `parse_alerts` reads back to an equal rule."""
        data: dict[str, Any] = {"name": self.name, "class": self.class_name, "for_s": self.for_s}
        optional = {"above": self.above, "below": self.below, "region": self.region, "clear": self.clear}
        data.update({key: value for key, value in optional.items() if value is not None})
        return data


@dataclass(frozen=True)
class AlertEvent:
    """One record of an event; an event yields one when it opens and one when it closes (same `event_id`).

    Attributes:
        event_id: f"{rule}:{start_pts!r}", the same in both records and in every run.
        rule, region, class_name: copied from the rule (region None: the whole frame).
        status: "open" (end_pts and end_wall None), "closed" (the value cleared) or "ended" (the stream
            ended with the event open; the end is its last frame).
        start_pts, start_wall: the frame where the condition began.
        end_pts, end_wall: the frame whose value closed the event (or the stream's last); None while open.
        peak: the most extreme value from the start to this record (max for above, min for below).
        at_pts, at_wall: the frame this record was made at: the opening or closing frame, or the stream's
            last frame for a record made by `finish`.
    """

    event_id: str
    rule: str
    region: str | None
    class_name: str
    status: Status
    start_pts: float
    start_wall: float
    end_pts: float | None
    end_wall: float | None
    peak: float
    at_pts: float
    at_wall: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AlertState:
    """Where one rule stands on one stream; updated in place by `evaluate`, stored with each commit.

    Attributes:
        last_pts: pts of the last frame evaluated; frames at or before it are ignored.
        start_pts, start_wall: where the condition began, while it holds (pending or open); else None.
        peak: the most extreme value since start_pts; None when the condition does not hold.
        is_open: whether an event has opened and not yet closed.
    """

    last_pts: float | None = None
    start_pts: float | None = None
    start_wall: float | None = None
    peak: float | None = None
    is_open: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable form; floats survive `json` exactly."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AlertState:
        """The state `to_dict` gave; raises ValueError for anything else (a stored state is never guessed)."""
        names = {f.name for f in fields(cls)}
        if not isinstance(data, Mapping) or set(data) != names:
            raise ValueError(f"not a stored alert state: {show(data)}")
        if not isinstance(data["is_open"], bool):
            raise ValueError(f"not a stored alert state (is_open): {show(data)}")
        for name in names - {"is_open"}:
            value = data[name]
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise ValueError(f"not a stored alert state ({name}): {show(data)}")
        numbers = {name: None if data[name] is None else float(data[name]) for name in names - {"is_open"}}
        return cls(is_open=data["is_open"], **numbers)

    def _reset(self) -> None:
        self.start_pts = self.start_wall = self.peak = None
        self.is_open = False


# ------------------------------------------------------------------------------------------ validation


def parse_alerts(
    c: Checker,
    value: Any,
    path: str = "alerts",
    region_names: Sequence[str] = (),
    class_names: Sequence[str] | None = None,
) -> tuple[AlertRule, ...]:
    """Validate a stream's `alerts` list (None or absent: no alerts), recording problems on `c`; only
    rules without problems are returned (nothing refers to them, unlike regions).

    `region_names` are the stream's regions (`parse_regions`); `class_names`, when given, the stream's
    class names (a rule's class is matched case-insensitively and stored as the vocabulary spells it).
    """
    items = c.bounded_list(value, path, "alert rules", MAX_ALERTS) or []
    rules: list[AlertRule] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        name, rule = _parse_rule(c, item, f"{path}[{i}]", region_names, class_names)
        if name is not None and c.distinct_name(seen, name, path, i) and rule is not None:
            rules.append(rule)
    return tuple(rules)


def _parse_rule(
    c: Checker, value: Any, path: str, region_names: Sequence[str], class_names: Sequence[str] | None
) -> tuple[str | None, AlertRule | None]:
    """(name, rule): the rule only when it has no problems; the name whenever usable (for duplicates)."""
    problems = len(c.problems)
    raw = c.mapping(value, path, _KEYS)
    if raw is None:
        return None, None
    for required in ("name", "class"):
        if required not in raw:
            c.error(join_path(path, required), "is required")
    name = c.string(raw["name"], join_path(path, "name")) if "name" in raw else None
    region = _parse_region_name(c, raw.get("region"), join_path(path, "region"), region_names)
    class_name = None
    if "class" in raw:
        class_name = _parse_class(c, raw["class"], join_path(path, "class"), class_names)
    above, below, clear = _parse_thresholds(c, raw, path)
    for_s = 0.0
    if raw.get("for_s") is not None:
        for_s = c.number(raw["for_s"], join_path(path, "for_s"), 0.0, inclusive=True) or 0.0
    if len(c.problems) > problems or name is None or class_name is None:
        return name, None
    return name, AlertRule(name, class_name, above, below, region, for_s, clear)


def _parse_region_name(c: Checker, value: Any, path: str, region_names: Sequence[str]) -> str | None:
    """A region of the stream, or None (the whole frame) when absent."""
    if value is None:
        return None
    name = c.string(value, path)
    if name is None or name in region_names:
        return name
    if not region_names:
        c.error(
            path,
            f"names region {name!r}, but the stream defines no regions (leave it out for the whole frame)",
        )
        return None
    hint = difflib.get_close_matches(name, region_names, n=1, cutoff=0.6)
    tip = f"did you mean {hint[0]!r}?" if hint else f"the stream's regions: {', '.join(region_names)}"
    c.error(path, f"names no region of the stream: {name!r}; {tip}")
    return None


def _parse_class(c: Checker, value: Any, path: str, class_names: Sequence[str] | None) -> str | None:
    name = c.string(value, path)
    if name is None or class_names is None:
        return name
    for known in class_names:
        if known.casefold() == name.casefold():
            return known
    hint = difflib.get_close_matches(name, class_names, n=1, cutoff=0.6)
    tip = f"did you mean {hint[0]!r}?" if hint else f"the stream's classes: {', '.join(class_names)}"
    c.error(path, f"{name!r} is not a class of the stream's vocabulary; {tip}")
    return None


def _parse_thresholds(
    c: Checker, raw: Mapping[str, Any], path: str
) -> tuple[float | None, float | None, float | None]:
    """(above, below, clear), each a fraction in 0..1; problems (also impossible rules) recorded on `c`."""
    given = [key for key in ("above", "below") if raw.get(key) is not None]
    if len(given) != 1:
        c.error(path, "give exactly one of above and below" + (", not both" if given else ""))
        return None, None, None
    key = given[0]
    threshold = _fraction(c, raw[key], join_path(path, key))
    clear = None
    if raw.get("clear") is not None:
        clear = _fraction(c, raw["clear"], join_path(path, "clear"))
    if threshold is None:
        return None, None, None
    if (key == "above" and threshold == 1.0) or (key == "below" and threshold == 0.0):
        c.error(
            join_path(path, key), f"a fraction is never {key} {threshold:g}, so the alert could never open"
        )
    if clear is not None and (clear > threshold if key == "above" else clear < threshold):
        side = "at or below" if key == "above" else "at or above"
        c.error(join_path(path, "clear"), f"must be {side} {key} ({threshold:g}), got {show(raw['clear'])}")
    return (threshold, None, clear) if key == "above" else (None, threshold, clear)


def _fraction(c: Checker, value: Any, path: str) -> float | None:
    number = c.number(value, path, 0.0, inclusive=True)
    if number is not None and number > 1.0:
        c.error(path, f"must be a fraction within 0..1, got {show(value)}")
        return None
    return number


# ------------------------------------------------------------------------------------------- evaluation


def rule_value(
    rule: AlertRule,
    class_names: Sequence[str],
    frame_pixels: np.ndarray,
    regions: Mapping[str, RegionAreas],
) -> float | None:
    """The rule's value on one frame: its class's share of its region (or of the whole frame, from the
    frame's per-class `frame_pixels`). None when the stream's current vocabulary lacks the class (a
    vocabulary may change while the stream runs)."""
    folded = [name.casefold() for name in class_names]
    if rule.class_name.casefold() not in folded:
        return None
    class_id = folded.index(rule.class_name.casefold())
    if rule.region is None:
        pixels, total = frame_pixels, int(np.sum(frame_pixels))
    else:
        pixels, total = regions[rule.region].pixels, regions[rule.region].total
    return float(pixels[class_id]) / total if total else 0.0


def evaluate(
    rule: AlertRule, state: AlertState, pts_seconds: float, wall_time: float, value: float
) -> list[AlertEvent]:
    """Advance `state` (in place) by one frame's value and return the records it produces (0 or 1).

    Frames must come in stream order; one whose pts is not after `state.last_pts` is ignored, which is
    what makes replaying frames from before a restored commit harmless.
    """
    if not all(math.isfinite(number) for number in (pts_seconds, wall_time, value)):
        raise ValueError(f"alert {rule.name!r}: pts, wall time and value must be finite numbers")
    # Floats throughout, so an int pts and its float give the same state, event ids included.
    pts_seconds, wall_time, value = float(pts_seconds), float(wall_time), float(value)
    if state.last_pts is not None and pts_seconds <= state.last_pts:
        return []
    state.last_pts = pts_seconds
    if state.is_open:
        return _step_open(rule, state, pts_seconds, wall_time, value)
    if not rule.holds(value):
        state._reset()
        return []
    if state.start_pts is None:
        state.start_pts, state.start_wall, state.peak = pts_seconds, wall_time, value
    else:
        state.peak = _extreme(rule, state.peak, value)
    if pts_seconds - state.start_pts >= rule.for_s:
        state.is_open = True
        return [_record(rule, state, "open", pts_seconds, wall_time)]
    return []


def _step_open(
    rule: AlertRule, state: AlertState, pts_seconds: float, wall_time: float, value: float
) -> list[AlertEvent]:
    if not rule.cleared(value):
        state.peak = _extreme(rule, state.peak, value)
        return []
    record = _record(rule, state, "closed", pts_seconds, wall_time, end=(pts_seconds, wall_time))
    state._reset()
    return [record]


def finish(rule: AlertRule, state: AlertState, last_pts: float, wall_time: float) -> list[AlertEvent]:
    """At the end of a stream (its source ended, or it was removed or cancelled; not an interruption
    that a resume continues): a record of the event still open, if any, with status "ended" and the
    stream's last frame as its end. The state is settled (nothing open or pending), so a stream closed
    again after a crash before this record was committed emits it once more, and otherwise never.
    """
    if not state.is_open:
        state._reset()
        return []
    end = (float(last_pts), float(wall_time))
    record = _record(rule, state, "ended", end[0], end[1], end=end)
    state._reset()
    return [record]


def _extreme(rule: AlertRule, peak: float | None, value: float) -> float:
    if peak is None:
        return value
    return max(peak, value) if rule.above is not None else min(peak, value)


def _record(
    rule: AlertRule,
    state: AlertState,
    status: Status,
    at_pts: float,
    at_wall: float,
    end: tuple[float, float] | None = None,
) -> AlertEvent:
    assert state.start_pts is not None and state.start_wall is not None and state.peak is not None
    return AlertEvent(
        event_id=f"{rule.name}:{state.start_pts!r}",
        rule=rule.name,
        region=rule.region,
        class_name=rule.class_name,
        status=status,
        start_pts=state.start_pts,
        start_wall=state.start_wall,
        end_pts=None if end is None else end[0],
        end_wall=None if end is None else end[1],
        peak=state.peak,
        at_pts=at_pts,
        at_wall=at_wall,
    )
