"""``curves.png``: a run's loss, test top-1 and learning rate per epoch, drawn with Pillow.

Pillow is already a dependency of lcrypt, so the curves need no plotting library. Three panels side by
side, each with its value range written on the y axis and the epochs on the x axis.
"""

from __future__ import annotations

import io
import math
from typing import Any, Sequence

PANELS = (("loss", (("train_loss", "train", (31, 119, 180)), ("test_loss", "test", (214, 39, 40)))),
          ("test top-1 %", (("test_top1", "test", (44, 160, 44)),)),
          ("learning rate", (("lr", "end of epoch", (148, 103, 189)),)))
W, H, MARGIN = 330, 240, 44


def draw_curves(rows: Sequence[dict[str, Any]]) -> bytes:
    """PNG bytes of the epoch lines ``rows`` (each with ``epoch`` and the keys of :data:`PANELS`)."""
    from PIL import Image, ImageDraw

    canvas = Image.new("RGB", (W * len(PANELS), H), "white")
    draw = ImageDraw.Draw(canvas)
    epochs = [int(r["epoch"]) for r in rows]
    for i, (title, series) in enumerate(PANELS):
        x0, y0, x1, y1 = i * W + MARGIN, 24, (i + 1) * W - 24, H - 30
        draw.rectangle((x0, y0, x1, y1), outline=(120, 120, 120))
        draw.text((x0, 6), title, fill="black")
        points = {key: [(e, float(r[key])) for e, r in zip(epochs, rows) if _finite(r.get(key))]
                  for key, _, _ in series}
        values = [v for pts in points.values() for _, v in pts]
        if not values:
            draw.text((x0 + 8, y0 + 8), "not measured", fill=(120, 120, 120))
            continue
        lo, hi = min(values), max(values)
        lo, hi = (lo - 0.5, hi + 0.5) if hi == lo else (lo, hi)
        e_lo, e_hi = min(epochs), max(max(epochs), min(epochs) + 1)

        def at(e: float, v: float) -> tuple[float, float]:
            return (x0 + (e - e_lo) / (e_hi - e_lo) * (x1 - x0), y1 - (v - lo) / (hi - lo) * (y1 - y0))

        draw.text((i * W + 2, y0), _num(hi), fill="black")
        draw.text((i * W + 2, y1 - 10), _num(lo), fill="black")
        draw.text((x0, y1 + 4), f"epoch {e_lo}", fill="black")
        draw.text((x1 - 50, y1 + 4), f"epoch {max(epochs)}", fill="black")
        legend_x = x0 + 60
        for key, label, colour in series:
            xy = [at(e, v) for e, v in points[key]]
            if len(xy) > 1:
                draw.line(xy, fill=colour, width=2)
            for x, y in xy:
                draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
            if len(series) > 1 and xy:
                draw.text((legend_x, 6), label, fill=colour)
                legend_x += 8 * len(label) + 12
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _num(v: float) -> str:
    return f"{v:.3g}" if 1e-3 <= abs(v) < 1e4 or v == 0 else f"{v:.1e}"
