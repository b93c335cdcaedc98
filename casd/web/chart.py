"""The chart of stored bytes over time, drawn on the server as inline SVG coordinates."""

from __future__ import annotations

from dataclasses import dataclass

from casd.web.store import Point

WIDTH, HEIGHT = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 70, 10, 10, 30


@dataclass(frozen=True)
class Tick:
    x: float
    y: float
    label: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    line: str  # SVG path of the curve
    area: str  # SVG path of the area under it
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    baseline: float
    left: float
    right: float


def human_bytes(size: int | float) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def stored_bytes_chart(points: list[Point]) -> Chart | None:
    """A step-free line through the cumulative points; None without data."""
    if len(points) < 2:
        return None
    start, end = points[0].at.timestamp(), points[-1].at.timestamp()
    top = max(point.bytes for point in points) or 1
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(at: float) -> float:
        return round(LEFT + plot_w * (at - start) / ((end - start) or 1), 1)

    def y(size: float) -> float:
        return round(TOP + plot_h * (1 - size / top), 1)

    coords = [(x(point.at.timestamp()), y(point.bytes)) for point in points]
    line = "M" + " L".join(f"{cx},{cy}" for cx, cy in coords)
    baseline = y(0)
    area = f"{line} L{coords[-1][0]},{baseline} L{coords[0][0]},{baseline} Z"
    y_ticks = [Tick(LEFT, y(top * part / 4), human_bytes(top * part / 4)) for part in range(5)]
    x_ticks = [
        Tick(coords[index][0], HEIGHT - 8, points[index].at.strftime("%Y-%m-%d %H:%M"))
        for index in (0, len(points) // 2, len(points) - 1)
    ]
    return Chart(WIDTH, HEIGHT, line, area, x_ticks, y_ticks, baseline, LEFT, WIDTH - RIGHT)
