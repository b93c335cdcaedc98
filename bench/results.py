"""Figures (one value per round, reported as median and min-max), ratios, targets, the table."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Figure:
    """One measured quantity: a value per round."""

    key: str
    label: str
    unit: str
    values: list[float] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def as_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "unit": self.unit,
            "median": self.median,
            "min": self.low,
            "max": self.high,
            "values": self.values,
            **({"detail": self.detail} if self.detail else {}),
        }


@dataclass(frozen=True)
class Target:
    """A goal from the issue: ``figure`` compared with ``threshold``."""

    description: str
    key: str
    threshold: float
    at_most: bool = False

    def met(self, figure: Figure) -> bool:
        return figure.median <= self.threshold if self.at_most else figure.median >= self.threshold


@dataclass
class Results:
    """Everything one run measured, in the order it was measured."""

    figures: dict[str, Figure] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def add(self, key: str, label: str, unit: str, value: float, **detail: Any) -> Figure:
        """Record one round's value of a figure (created on first use)."""
        figure = self.figures.setdefault(key, Figure(key, label, unit))
        figure.values.append(value)
        for name, item in detail.items():
            figure.detail.setdefault(name, []).append(item)
        return figure

    def get(self, key: str) -> Figure | None:
        figure = self.figures.get(key)
        return figure if figure is not None and figure.values else None

    def ratio(self, key: str, label: str, numerator: str, denominator: str) -> Figure | None:
        """numerator / denominator, round by round when both were measured in the same rounds
        (side by side), else as the ratio of their medians."""
        top, bottom = self.get(numerator), self.get(denominator)
        if top is None or bottom is None:
            return None
        if len(top.values) == len(bottom.values):
            pairs = zip(top.values, bottom.values, strict=True)
            values = [a / b if b else 0.0 for a, b in pairs]
        else:
            values = [top.median / bottom.median if bottom.median else 0.0]
        figure = Figure(key, label, "x", values, {"of": [numerator, denominator]})
        self.figures[key] = figure
        return figure

    def derive(
        self, key: str, label: str, unit: str, keys: list[str], how: Callable[..., float]
    ) -> Figure | None:
        """A figure computed round by round from others (all with the same number of rounds)."""
        sources = [self.get(source) for source in keys]
        if any(source is None for source in sources):
            return None
        rounds = {len(source.values) for source in sources if source is not None}
        if len(rounds) != 1:
            return None
        columns = zip(*(source.values for source in sources if source is not None), strict=True)
        figure = Figure(key, label, unit, [how(*column) for column in columns], {"of": keys})
        self.figures[key] = figure
        return figure

    def note(self, text: str) -> None:
        self.notes.append(text)

    def as_json(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "figures": {
                key: figure.as_json() for key, figure in self.figures.items() if figure.values
            },
            "targets": [self._target_json(target) for target in self.targets],
            "notes": self.notes,
        }

    def _target_json(self, target: Target) -> dict[str, Any]:
        figure = self.get(target.key)
        return {
            "target": target.description,
            "figure": target.key,
            "threshold": target.threshold,
            "median": figure.median if figure else None,
            "met": target.met(figure) if figure else None,
        }

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_json(), indent=2) + "\n")


def format_value(value: float) -> str:
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def render_table(results: Results) -> str:
    """The figures as an aligned text table, section by section, then the targets."""
    rows = [("figure", "unit", "median", "min-max", "n")]
    section = None
    for key, figure in results.figures.items():
        if not figure.values:
            continue
        if key.split(".")[0] != section:
            section = key.split(".")[0]
            rows.append((f"[{section}]", "", "", "", ""))
        spread = f"{format_value(figure.low)}-{format_value(figure.high)}"
        rows.append(
            (
                "  " + figure.label,
                figure.unit,
                format_value(figure.median),
                spread,
                str(len(figure.values)),
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(5)]
    lines = [
        "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        )
        for row in rows
    ]
    lines.extend(_target_lines(results))
    if results.notes:
        lines.append("")
        lines.extend(f"note: {text}" for text in results.notes)
    return "\n".join(lines)


def _target_lines(results: Results) -> list[str]:
    if not results.targets:
        return []
    lines = ["", "targets (median):"]
    for target in results.targets:
        figure = results.get(target.key)
        if figure is None:
            lines.append(f"  [ -- ] {target.description}: not measured")
            continue
        verdict = " met" if target.met(figure) else "MISS"
        lines.append(f"  [{verdict}] {target.description}: {format_value(figure.median)}")
    return lines
