"""The evidence as plots: small SVG documents drawn on the server from a job's metrics, so the
console needs no charting library and no script to show them. Each plot has a title and a
description for screen readers; the figures themselves are also in the page as a table."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Any

from markupsafe import Markup

# Above this many classes the accuracy plot shows the forget classes and the retain classes
# that moved most: a 1,000-class bar chart says nothing on a laptop screen.
MAX_CLASSES = 30
LABEL_CHARS = 16  # longer class names are cut, the whole name in the label's tooltip


@dataclass(frozen=True)
class Series:
    label: str
    values: dict[str, float | None]
    css: str  # the bar colour, from console.css


def _svg(width: int, height: int, title: str, body: list[str]) -> Markup:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>'
    )
    return Markup(head + "".join(body) + "</svg>")


def _text(x: float, y: float, text: str, css: str = "", anchor: str = "middle") -> str:
    cls = f' class="{css}"' if css else ""
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{cls}>{escape(text)}</text>'


def _legend(series: list[Series], x: float, y: float) -> list[str]:
    out = []
    for i, s in enumerate(series):
        left = x + i * 150
        out.append(f'<rect x="{left:.1f}" y="{y - 9:.1f}" width="12" height="12" class="{s.css}"/>')
        out.append(_text(left + 18, y + 1, s.label, anchor="start"))
    return out


def shown_classes(classes: list[str], series: list[Series], forget: set[str]) -> list[str]:
    """Every class, or past ``MAX_CLASSES`` the forget classes and the most changed others."""
    if len(classes) <= MAX_CLASSES:
        return classes
    first, last = series[0].values, series[-1].values

    def moved(name: str) -> float:
        a, b = first.get(name), last.get(name)
        return abs(a - b) if a is not None and b is not None else 0.0

    others = sorted((c for c in classes if c not in forget), key=moved, reverse=True)
    keep = set(others[: max(MAX_CLASSES - len(forget), 0)]) | forget
    return [c for c in classes if c in keep]


def per_class_accuracy(classes: list[str], series: list[Series], forget: set[str]) -> Markup:
    """Grouped bars: each class's held-out accuracy in every series (before, after, reference),
    the forget classes' labels marked."""
    shown = shown_classes(classes, series, forget)
    left, top, plot_h, group_w = 48, 30, 180, max(24, 14 * len(series) + 10)
    width = left + group_w * len(shown) + 20
    bar_w = (group_w - 10) / len(series)
    longest = max((len(n) for n in shown), default=0)
    slanted = longest * 6.5 > group_w  # at 11 px, about 6.5 px a character
    body = _legend(series, left, 16)
    for tick in (0, 25, 50, 75, 100):
        y = top + plot_h * (1 - tick / 100)
        body.append(f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        body.append(_text(left - 6, y + 4, f"{tick}%", anchor="end"))
    for g, name in enumerate(shown):
        x0 = left + g * group_w + 5
        for i, s in enumerate(series):
            value = s.values.get(name)
            if value is None:
                continue
            h = plot_h * value
            x = x0 + i * bar_w
            body.append(
                f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w - 1:.1f}" '
                f'height="{h:.1f}" class="{s.css}"><title>{escape(name)}, {escape(s.label)}: '
                f"{value:.1%}</title></rect>"
            )
        css = "forget-label" if name in forget else ""
        body.append(_class_label(x0 + (group_w - 10) / 2, top + plot_h + 16, name, css, slanted))
    title = "Held-out accuracy per class" + (" (forgotten classes in red)" if forget else "")
    below = 7 * min(longest, LABEL_CHARS) if slanted else 0
    return _svg(int(width), top + plot_h + 30 + below, title, body)


def _class_label(x: float, y: float, name: str, css: str, slanted: bool) -> str:
    """A class name under its bars; long names slant, so neighbours do not overlap."""
    text = name if len(name) <= LABEL_CHARS else name[: LABEL_CHARS - 1] + "…"
    if not slanted:
        return _text(x, y, text, css)
    cls = f' class="{css}"' if css else ""
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="end" transform="rotate(-40 {x:.1f} '
        f'{y:.1f})"{cls}><title>{escape(name)}</title>{escape(text)}</text>'
    )


@dataclass(frozen=True)
class Marker:
    label: str
    value: float
    css: str


def membership_band(
    markers: list[Marker], band: tuple[float, float] | None, band_label: str
) -> Markup:
    """A 0-100% line of member rates: the band the gate accepts, and each model's rate on the
    forget set."""
    left, width, y = 40, 900, 50
    span = width - 2 * left

    def at(v: float) -> float:
        return left + span * min(max(v, 0.0), 1.0)

    body = []
    if band is not None:
        lo, hi = at(band[0]), at(band[1])
        body.append(
            f'<rect x="{lo:.1f}" y="{y - 16}" width="{hi - lo:.1f}" height="32" class="band"/>'
        )
        body.append(_text(lo, y - 22, band_label, anchor="start"))
    body.append(f'<line x1="{left}" x2="{width - left}" y1="{y}" y2="{y}" class="axis"/>')
    for tick in range(0, 101, 10):
        body.append(_text(at(tick / 100), y + 32, f"{tick}%"))
    for i, m in enumerate(markers):
        x = at(m.value)
        body.append(
            f'<circle cx="{x:.1f}" cy="{y}" r="6" class="{m.css}">'
            f"<title>{escape(m.label)}: {m.value:.1%}</title></circle>"
        )
        legend = left + i * 200
        body.append(f'<circle cx="{legend + 6}" cy="{y + 56}" r="6" class="{m.css}"/>')
        body.append(_text(legend + 18, y + 60, f"{m.label} {m.value:.1%}", anchor="start"))
    return _svg(width, y + 72, "Membership-inference member rate on the forget set", body)


def bars(rows: list[tuple[str, float, str]], unit: str, title: str) -> Markup:
    """Horizontal bars on one linear scale (label, value, css)."""
    left, width, bar_h = 190, 900, 22
    top = 10
    largest = max((v for _, v, _ in rows), default=0.0) or 1.0
    span = width - left - 190
    body = []
    for i, (label, value, css) in enumerate(rows):
        y = top + i * (bar_h + 10)
        w = max(span * value / largest, 1.0)
        body.append(_text(left - 8, y + 15, label, anchor="end"))
        body.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" class="{css}"/>')
        body.append(_text(left + w + 6, y + 15, f"{value:,.4g} {unit}", anchor="start"))
    height = top + len(rows) * (bar_h + 10)
    return _svg(width, height, title, body)


def psnr_bars(before: dict[str, Any], after: dict[str, Any]) -> Markup:
    """Image-to-image: completion PSNR of forget and retain images, before and after."""
    rows = []
    for group in ("forget", "retain"):
        for when, figures, css in (("before", before, "before"), ("after", after, "after")):
            psnr = (figures.get(group) or {}).get("psnr")
            if psnr is not None:
                rows.append((f"{group}, {when}", float(psnr), css))
    return bars(rows, "dB", "Completion PSNR (higher: closer to the image)") if rows else Markup("")
