"""A stream's alert rules at work in its writer: frames in, numbered event records out, and a state that is
committed with the stream's parts so that records are made exactly once across crashes and resumes.

Exactly once, by construction rather than by deduplication:

- records are numbered per stream (`sequence` 0, 1, 2, ...) in the order they are made;
- the writer commits every record as soon as it is made (events are rare), before the rows of the frame
  that made it are handed to any other table, and the job store stores this object's state (`to_json`)
  atomically with every `events` and `frames` part it records (`pipeline.jobs.state.JobStore.record_commit`);
- so the stored state always counts exactly the committed records, and it has seen every frame whose rows
  are committed. A new attempt restores it (`restore`) and replays the frames after the committed ones:
  frames the state has already seen are ignored (`pipeline.alerts.evaluate`), later ones make the records an
  undisturbed run would have made, numbered on from the committed ones. This also holds for a live stream,
  whose lost frames are never replayed: the state never counts a record that was not committed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.alerts import AlertEvent, AlertRule, AlertState, evaluate, finish, rule_value
from pipeline.frames import FrameAreas
from pipeline.regions import RegionAreas

_VERSION = 1


@dataclass(frozen=True)
class EventRecord:
    """An alert record with its place in the stream: its `sequence` and the frame it was made at."""

    sequence: int
    frame_index: int
    event: AlertEvent

    def row(self, job_id: str, stream_id: str) -> dict[str, Any]:
        """The record as an `events` row (and as the JSON body a webhook receives)."""
        event = self.event
        return {
            "job_id": job_id,
            "stream_id": stream_id,
            "sequence": self.sequence,
            "event_id": event.event_id,
            "rule": event.rule,
            "region": event.region,
            "class_name": event.class_name,
            "status": event.status,
            "start_pts": event.start_pts,
            "end_pts": event.end_pts,
            "start_wall": event.start_wall,
            "end_wall": event.end_wall,
            "peak": event.peak,
            "frame_index": self.frame_index,
            "pts_seconds": event.at_pts,
            "wall_time": event.at_wall,
        }


@dataclass(frozen=True)
class _LastFrame:
    index: int
    pts: float
    wall: float


class StreamAlerts:
    """Evaluates a stream's rules on its analysed frames, in order (see the module docstring).

    Args:
        rules: the stream's alert rules (`StreamSpec.alerts`).
    """

    def __init__(self, rules: Sequence[AlertRule]) -> None:
        self.rules = tuple(rules)
        self.states = {rule.name: AlertState() for rule in self.rules}
        self.next_sequence = 0
        self._last: _LastFrame | None = None

    def __bool__(self) -> bool:
        return bool(self.rules)

    # state ----------------------------------------------------------------------------------------
    def to_json(self) -> str:
        """The state stored with each commit: rule states, the next sequence number and the last frame."""
        last = None if self._last is None else [self._last.index, self._last.pts, self._last.wall]
        states = {name: state.to_dict() for name, state in self.states.items()}
        return json.dumps({"version": _VERSION, "next": self.next_sequence, "last": last, "rules": states})

    def restore(self, stored: str | None, committed_through: int) -> None:
        """Start from the committed state (`stored`, None before the stream's first commit) and the last
        committed record's sequence (-1 for none). Rules the stored state does not know start afresh."""
        self.states = {rule.name: AlertState() for rule in self.rules}
        self.next_sequence, self._last = committed_through + 1, None
        if stored is None:
            return
        data = json.loads(stored)
        if not isinstance(data, dict) or data.get("version") != _VERSION:
            raise ValueError(f"not a stored alert state: {stored[:200]!r}")
        if data["next"] != committed_through + 1:
            # The state is committed atomically with every events part, so this cannot happen unless
            # the store was edited by hand: numbering on would overwrite or skip records.
            raise ValueError(
                f"stored alert state expects record {data['next']} next, but records through "
                f"{committed_through} are committed"
            )
        if data["last"] is not None:
            index, pts, wall = data["last"]
            self._last = _LastFrame(int(index), float(pts), float(wall))
        for name, state in data["rules"].items():
            if name in self.states:
                self.states[name] = AlertState.from_dict(state)

    # evaluation -----------------------------------------------------------------------------------
    def observe(
        self,
        areas: Sequence[FrameAreas],
        wall_times: Sequence[float],
        vocabularies: Mapping[int, Sequence[str]],
    ) -> list[EventRecord]:
        """Evaluate every rule on each frame (in stream order) and number the records made. Frames at or
        before the last frame seen are skipped: they were evaluated before the state was committed."""
        records: list[EventRecord] = []
        for item, wall in zip(areas, wall_times, strict=True):
            if self._last is not None and item.pts_seconds <= self._last.pts:
                continue
            self._last = _LastFrame(item.frame_index, float(item.pts_seconds), float(wall))
            regions = _region_areas(item)
            names = vocabularies[item.vocabulary_version]
            for rule in self.rules:
                value = rule_value(rule, names, item.pixels, regions)
                if value is None:  # the class is not in the vocabulary this frame was analysed with
                    continue
                state = self.states[rule.name]
                records += self._number(
                    item.frame_index, evaluate(rule, state, item.pts_seconds, wall, value)
                )
        return records

    def finish(self) -> list[EventRecord]:
        """The stream has ended for good: records of the events still open ("ended"), at its last frame."""
        if self._last is None:
            return []
        last, records = self._last, []
        for rule in self.rules:
            records += self._number(last.index, finish(rule, self.states[rule.name], last.pts, last.wall))
        return records

    def _number(self, frame_index: int, events: list[AlertEvent]) -> list[EventRecord]:
        numbered = []
        for event in events:
            numbered.append(EventRecord(self.next_sequence, frame_index, event))
            self.next_sequence += 1
        return numbered


def _region_areas(item: FrameAreas) -> dict[str, RegionAreas]:
    if item.region_pixels is None:
        return {}
    return {
        name: RegionAreas(pixels=row, total=int(row.sum()))
        for name, row in zip(item.region_names, item.region_pixels, strict=True)
    }
