"""Writing evaluation results: CSV and markdown tables, a grouped bar chart (PIL), atomic files.

Every file is written to a temporary name in its folder and renamed onto the destination, so a
reader never sees half a table.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Mapping, Sequence

from PIL import Image, ImageDraw, ImageFont

from dreamix_jax.data import outputs

# Bar colors of the chart's groups (cycled).
_PALETTE = ((76, 114, 176), (221, 132, 82), (85, 168, 104), (196, 78, 82), (129, 114, 179),
            (147, 120, 96))


def write_text(path: str, text: str) -> None:
  """Writes `text` (UTF-8) to `path` atomically, creating the folder."""
  with outputs.atomic_path(path) as temporary:
    with open(temporary, "w", encoding="utf-8", newline="") as f:
      f.write(text)


def format_value(value) -> str:
  """Floats with 4 significant decimals (empty for NaN), everything else as str."""
  if isinstance(value, float):
    return "" if math.isnan(value) else f"{value:.4g}"
  return str(value)


def columns_of(rows: Sequence[Mapping]) -> list[str]:
  """The union of the rows' keys, in first-seen order."""
  columns: dict[str, None] = {}
  for row in rows:
    columns.update(dict.fromkeys(row))
  return list(columns)


def csv_text(rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> str:
  """A CSV table with a header; missing values are empty."""
  columns = list(columns or columns_of(rows))
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(columns)
  for row in rows:
    writer.writerow([format_value(row.get(c, "")) for c in columns])
  return buffer.getvalue()


def markdown_text(rows: Sequence[Mapping], columns: Sequence[str] | None = None,
                  title: str = "") -> str:
  """A GitHub markdown table (with an optional `## title` above); `|` in cells is escaped."""
  columns = list(columns or columns_of(rows))
  cell = lambda v: format_value(v).replace("|", "\\|")
  lines = [f"## {title}", ""] if title else []
  lines.append("| " + " | ".join(columns) + " |")
  lines.append("|" + "|".join("---" for _ in columns) + "|")
  lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def write_tables(stem: str, rows: Sequence[Mapping], columns: Sequence[str] | None = None,
                 title: str = "") -> tuple[str, str]:
  """Writes `<stem>.csv` and `<stem>.md`; returns their paths."""
  write_text(stem + ".csv", csv_text(rows, columns))
  write_text(stem + ".md", markdown_text(rows, columns, title))
  return stem + ".csv", stem + ".md"


def write_bar_chart(path: str, groups: Sequence[str], series: Mapping[str, Sequence[float]],
                    title: str, *, bar_width: int = 14, height: int = 200) -> None:
  """A grouped bar chart of values in [0, 1] as a png.

  Args:
    path: destination png.
    groups: the x-axis groups (e.g. edit categories).
    series: name -> one value in [0, 1] per group (e.g. success rate per method); NaN draws no
      bar. Each series has its color, named in the legend.
    title: drawn above the chart.
  """
  for name, values in series.items():
    if len(values) != len(groups):
      raise ValueError(f"Series {name!r} has {len(values)} values for {len(groups)} groups.")
  font = ImageFont.load_default(size=11)
  left, top, bottom, gap = 34, 24, 30, 16
  group_width = bar_width * len(series) + gap
  legend_width = 12 + max((int(font.getlength(n)) for n in series), default=0) + 20
  width = left + group_width * len(groups) + legend_width
  image = Image.new("RGB", (width, top + height + bottom), (255, 255, 255))
  draw = ImageDraw.Draw(image)
  draw.text((left, 4), title, fill=(0, 0, 0), font=font)
  y0 = top + height
  for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
    y = y0 - round(tick * height)
    draw.line([(left - 3, y), (left + group_width * len(groups), y)], fill=(225, 225, 225))
    draw.text((2, y - 6), f"{tick:.2f}", fill=(0, 0, 0), font=font)
  for g, group in enumerate(groups):
    x_group = left + g * group_width + gap // 2
    for s, (name, values) in enumerate(series.items()):
      value = values[g]
      if math.isnan(value):
        continue
      x = x_group + s * bar_width
      y = y0 - round(min(max(value, 0.0), 1.0) * height)
      draw.rectangle([x, y, x + bar_width - 2, y0], fill=_PALETTE[s % len(_PALETTE)])
    draw.text((x_group, y0 + 4), group, fill=(0, 0, 0), font=font)
  draw.line([(left, top), (left, y0), (left + group_width * len(groups), y0)], fill=(0, 0, 0))
  x_legend = left + group_width * len(groups) + 10
  for s, name in enumerate(series):
    y = top + 16 * s
    draw.rectangle([x_legend, y + 2, x_legend + 9, y + 11], fill=_PALETTE[s % len(_PALETTE)])
    draw.text((x_legend + 13, y), name, fill=(0, 0, 0), font=font)
  with outputs.atomic_path(path) as temporary:
    image.save(temporary, format="PNG")
