"""Training metrics: a crash-safe CSV log and an offline, interactive Plotly page of it.

The CSV is the single source of truth; the HTML page is always rebuilt from it, so a page can
be regenerated after the fact with `plot_metrics(csv_path, html_path)`.
"""

import csv
import html
import io
import math
import numbers
import os
import secrets
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from natural_dreamer.files import open_in_place
from natural_dreamer.utils import naming_write_errors

# Columns that keep a fixed place whatever order the first row lists them in.
LEADING_COLUMNS = ("env_steps", "gradient_steps", "episode_return")
TRAILING_COLUMNS = ("wall_seconds",)
RETURN_COLUMNS = ("episode_return", "return_last10", "eval_return")
# Monotone counters, plotted apart so their large scale does not flatten real metrics.
PROGRESS_COLUMNS = ("gradient_steps", "wall_seconds")
PLOTLY_BUNDLE = "plotly.min.js"


def order_columns(existing: Iterable[str], new: Iterable[str] = ()) -> list[str]:
    """Return the CSV header for `existing` columns extended by `new` ones.

    `LEADING_COLUMNS` come first (in that order), `TRAILING_COLUMNS` last, and every other
    column keeps its first-seen order: existing columns, then new ones.
    """
    names = list(existing)
    names += [name for name in new if name not in names]
    leading = [name for name in LEADING_COLUMNS if name in names]
    trailing = [name for name in TRAILING_COLUMNS if name in names]
    middle = [name for name in names if name not in leading and name not in trailing]
    return leading + middle + trailing


def _format_value(value) -> str:
    """One CSV cell: '' for None, integers as integers, anything else through float()."""
    if value is None:
        return ""
    if isinstance(value, str | bytes):
        raise TypeError(f"metric values must be numbers, got {value!r}")
    if isinstance(value, numbers.Integral):  # also bool and numpy integers
        return str(int(value))
    return repr(float(value))  # shortest text that round-trips; also 0-d tensors


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV written by MetricsLogger; ([], []) if the file is empty.

    A last line without its newline is the remains of a write cut short by a crash: it is
    dropped rather than read as a row of truncated numbers. So is any line that is not a
    row of numbers as long as the header (a file cut short by another process, then
    appended to): a row is whole or absent. A link at `path` is refused (OSError).
    """
    text = ""
    if path.exists() or path.is_symlink():
        with os.fdopen(open_in_place(path, os.O_RDONLY, single=False), "rb") as handle:
            text = handle.read().decode("utf-8", errors="replace")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    lines = list(csv.reader(text.splitlines()))
    if not lines:
        return [], []
    header = lines[0]
    rows = [line for line in lines[1:] if len(line) == len(header) and all(map(_numeric, line))]
    return header, [dict(zip(header, line, strict=True)) for line in rows]


def _numeric(cell: str) -> bool:
    """Whether a CSV cell is one the logger writes: empty, or a number."""
    if cell == "":
        return True
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so a reader (or a crash) never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # open(..., "x") rather than mkstemp: the file gets the usual umask permissions, not 0600.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with (
            naming_write_errors(path),
            open(temporary, "x", encoding="utf-8", newline="") as handle,
        ):
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


class MetricsLogger:
    """Append metric rows to a CSV and keep an HTML plot of it up to date.

    Args:
        csv_path: the CSV file; its folder is created. An existing file is continued (resume):
            its header is kept and rows are appended after the old ones.
        html_path: optional Plotly page rebuilt from the CSV by `log` (at most every
            `plot_every_seconds`) and by `close`.
        title: title shown on the page.
        plot_every_seconds: minimum wall time between two page rebuilds during `log`.
        resume_from_env_steps: if given, rows with env_steps greater than this are dropped
            when opening (the run restarts from a checkpoint taken at that point).

    The header is fixed by the first row (see `order_columns`). A later row may omit
    columns (empty cells); a row with a new column makes the file be rewritten with the
    extended header, old rows kept. Every `log` is flushed and fsynced before returning.
    """

    def __init__(
        self,
        csv_path: str | os.PathLike,
        html_path: str | os.PathLike | None = None,
        title: str = "",
        plot_every_seconds: float = 60.0,
        resume_from_env_steps: float | None = None,
    ):
        self.csv_path = Path(csv_path)
        self.html_path = None if html_path is None else Path(html_path)
        self.title = title
        self.plot_every_seconds = plot_every_seconds
        self._last_plot_time: float | None = None
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        self.header, rows = _read_rows(self.csv_path)
        # Rewriting also clears a line cut short by a crash, so appends start on a clean line.
        self._rewrite(self.header, rows)
        if resume_from_env_steps is not None:
            self.truncate_after(resume_from_env_steps)

    def log(self, row: Mapping[str, object]) -> None:
        """Append one row {column name: number or None} to the CSV, then maybe replot."""
        if not row:
            raise ValueError("cannot log an empty row")
        if not all(isinstance(name, str) for name in row):
            raise TypeError(f"column names must be strings, got {list(row)}")
        cells = {name: _format_value(value) for name, value in row.items()}
        new_columns = [name for name in row if name not in self.header]
        if not self.csv_path.exists():  # removed mid-run: start it again, header first
            self._rewrite(order_columns(self.header, new_columns), [cells])
        elif new_columns:
            _, old_rows = _read_rows(self.csv_path)
            self._rewrite(order_columns(self.header, new_columns), old_rows + [cells])
        elif not self._ends_cleanly():  # cut short by another process: rows stay whole
            _, old_rows = _read_rows(self.csv_path)
            self._rewrite(self.header, old_rows + [cells])
        else:
            line = io.StringIO()
            csv.writer(line, lineterminator="\n").writerow(
                [cells.get(name, "") for name in self.header]
            )
            flags = os.O_WRONLY | os.O_APPEND
            with naming_write_errors(self.csv_path):
                with os.fdopen(open_in_place(self.csv_path, flags), "wb") as handle:
                    handle.write(line.getvalue().encode("utf-8"))
                    handle.flush()
                    os.fsync(handle.fileno())
        self._maybe_plot()

    def _ends_cleanly(self) -> bool:
        """Whether the CSV is empty or ends with a whole line (a row appends after it)."""
        with os.fdopen(open_in_place(self.csv_path, os.O_RDONLY, single=False), "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            return size == 0 or (handle.seek(size - 1) >= 0 and handle.read(1) == b"\n")

    def last(self, column: str) -> float | None:
        """The newest non-empty value of `column`, or None."""
        _, rows = _read_rows(self.csv_path)
        values = [row[column] for row in rows if row.get(column)]
        return float(values[-1]) if values else None

    def truncate_after(self, env_steps: float) -> int:
        """Drop rows whose env_steps is greater than `env_steps`; return how many were dropped.

        Rows with an empty env_steps cell are kept, since they cannot be placed in time.
        """
        header, rows = _read_rows(self.csv_path)
        if not rows:
            return 0
        if "env_steps" not in header:
            raise ValueError(f"{self.csv_path} has no env_steps column to truncate on")
        kept = [row for row in rows if not row.get("env_steps") or _env_steps(row) <= env_steps]
        self._rewrite(header, kept)
        return len(rows) - len(kept)

    def plot(self) -> None:
        """Rebuild the HTML page now (no-op without html_path). The page is a view of the
        CSV: a page that cannot be written (a read-only or full plots folder) is a warning
        line on stderr, and the rows and the run go on."""
        if self.html_path is None:
            return
        self._last_plot_time = time.monotonic()
        try:
            plot_metrics(self.csv_path, self.html_path, self.title)
        except (OSError, ValueError) as error:
            why = getattr(error, "strerror", None) or str(error).splitlines()[0][:160]
            print(f"warning: cannot write the page {self.html_path}: {why}", file=sys.stderr)

    def close(self) -> None:
        """Rebuild the HTML page a final time. The CSV needs no closing: it is never held open."""
        self.plot()

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _maybe_plot(self) -> None:
        last = self._last_plot_time
        if last is None or time.monotonic() - last >= self.plot_every_seconds:
            self.plot()

    def _rewrite(self, header: list[str], rows: list[Mapping[str, str]]) -> None:
        """Replace the whole CSV atomically, so a crash mid-rewrite keeps the old rows."""
        self.header = header
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        if header:
            writer.writerow(header)
        writer.writerows([row.get(name, "") for name in header] for row in rows)
        _atomic_write_text(self.csv_path, buffer.getvalue())


def _env_steps(row: Mapping[str, str]) -> float:
    return float(row["env_steps"])


def smooth(values, weight: float = 0.9) -> np.ndarray:
    """Debiased exponential moving average, as TensorBoard's smoothing slider computes it.

    m_t = weight * m_{t-1} + (1 - weight) * x_t with m_0 = 0, and s_t = m_t / (1 - weight**n_t)
    with n_t the number of finite values seen so far: the division removes the pull towards
    m_0 = 0 at the start. Non-finite values are returned unchanged and do not update m.
    Input: 1-D sequence of numbers; output: float64 array of equal length.
    """
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"weight must be in [0, 1), got {weight}")
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {values.shape}")
    smoothed = values.copy()
    average, count = 0.0, 0
    for index, value in enumerate(values):
        if not math.isfinite(value):
            continue
        average = weight * average + (1.0 - weight) * value
        count += 1
        smoothed[index] = average / (1.0 - weight**count)
    return smoothed


def read_metrics(csv_path: str | os.PathLike) -> pd.DataFrame:
    """The CSV as a DataFrame of numbers (unparsable cells become NaN); empty if no rows yet.
    Only whole rows are read (see _read_rows): a damaged line is left out, not an error."""
    header, rows = _read_rows(Path(csv_path))
    if not header:  # a zero-byte file: the logger has not logged yet
        return pd.DataFrame()
    frame = pd.DataFrame([[row[name] for name in header] for row in rows], columns=header)
    return frame.apply(pd.to_numeric, errors="coerce")


def group_columns(columns: Iterable[str]) -> dict[str, list[str]]:
    """Group metric names into subplots, in display order.

    "return" (episode_return, return_last10, eval_return) comes first, then one group per
    name prefix ("world_model/kl" -> "world_model") in first-seen order, then "other" for
    names without a prefix, then "progress" for the counters gradient_steps and
    wall_seconds. env_steps is the x axis and belongs to no group. Empty groups are left out.
    """
    columns = [name for name in columns if name != "env_steps"]
    groups: dict[str, list[str]] = {"return": [n for n in RETURN_COLUMNS if n in columns]}
    other, progress = [], [n for n in PROGRESS_COLUMNS if n in columns]
    for name in columns:
        if name in RETURN_COLUMNS or name in PROGRESS_COLUMNS:
            continue
        if "/" in name:
            groups.setdefault(name.split("/", 1)[0], []).append(name)
        else:
            other.append(name)
    groups["other"] = groups.get("other", []) + other
    groups["progress"] = progress
    return {group: names for group, names in groups.items() if names}


def _series_weight(length: int, weight: float) -> float:
    """Cap the averaging window 1 / (1 - weight) at a tenth of the series length, so a short
    or sparse series (a few eval returns) is not smoothed past recognition."""
    return min(weight, max(0.0, 1.0 - 10.0 / max(length, 1)))


def _wants_log_axis(values: pd.DataFrame) -> bool:
    """A log y axis when a group is all positive and spans 100x or more, so a large loss
    (reconstruction) does not flatten the small ones (KL, reward) into one line."""
    finite = values.to_numpy(dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    return finite.size > 0 and finite.min() > 0 and finite.max() >= 100 * finite.min()


def _series_traces(x: pd.Series, y: pd.Series, name: str, color: str, legend: str, weight):
    """The raw (hidden until clicked in the legend) and smoothed (shown) traces of a column."""
    keep = x.notna() & y.notna()
    x, y = x[keep].to_numpy(), y[keep].to_numpy()
    mode = "lines" if len(y) > 1 else "markers"  # a lone point draws no line
    common = dict(x=x, mode=mode, legend=legend, hovertemplate="%{y:.4g}")
    raw = go.Scatter(
        y=y,
        name=f"{name} (raw)",
        visible="legendonly",
        opacity=0.35,
        line=dict(color=color, width=1),
        marker=dict(color=color),
        **common,
    )
    smoothed = go.Scatter(
        y=smooth(y, _series_weight(len(y), weight)),
        name=name,
        line=dict(color=color, width=2),
        marker=dict(color=color),
        **common,
    )
    return raw, smoothed


def _add_group(figure: go.Figure, row: int, group: str, x: pd.Series, values, weight) -> None:
    """Draw the columns of `values` in subplot `row`, with a legend of their own beside it."""
    legend = "legend" if row == 1 else f"legend{row}"
    for index, column in enumerate(values.columns):
        short = column.split("/", 1)[1] if column.startswith(f"{group}/") else column
        color = qualitative.Plotly[index % len(qualitative.Plotly)]
        for trace in _series_traces(x, values[column], short, color, legend, weight):
            figure.add_trace(trace, row=row, col=1)
    if group != "return" and _wants_log_axis(values):  # returns stay linear, as in papers
        figure.update_yaxes(type="log", row=row, col=1)
    top = figure.layout[f"yaxis{'' if row == 1 else row}"].domain[1]
    figure.update_layout({legend: dict(x=1.01, xanchor="left", y=top, yanchor="top")})


def build_figure(frame: pd.DataFrame, title: str = "", weight: float = 0.9) -> go.Figure:
    """A Plotly figure of a metrics DataFrame: one subplot per `group_columns` group.

    x is env_steps (the row number if that column is missing). Each subplot has its own
    legend beside it; each column gives a raw trace named "<name> (raw)" with
    visible="legendonly" and a smoothed trace named "<name>" (`smooth` with `weight`, capped
    for short series), where <name> is the column without its group prefix. A group of
    positive losses spanning 100x or more gets a log y axis. Raises ValueError if there is
    nothing to plot. The "progress" counters are drawn unsmoothed.
    """
    groups = group_columns(frame.columns)
    if not groups:
        raise ValueError("no metric columns to plot")
    has_steps = "env_steps" in frame
    x = frame["env_steps"] if has_steps else pd.Series(np.arange(len(frame)), index=frame.index)
    row_height, gap = 280, 70  # pixels; the gap leaves room for the subplot titles
    plot_height = len(groups) * row_height + (len(groups) - 1) * gap
    figure = make_subplots(
        rows=len(groups),
        cols=1,
        subplot_titles=list(groups),
        shared_xaxes=True,
        vertical_spacing=gap / plot_height,
    )
    for row, (group, columns) in enumerate(groups.items(), start=1):
        # Counters are exact; smoothing them would only make them lag.
        group_weight = 0.0 if group == "progress" else weight
        _add_group(figure, row, group, x, frame[columns], group_weight)
    figure.update_xaxes(showticklabels=True)
    figure.update_xaxes(title_text="env_steps" if has_steps else "row", row=len(groups), col=1)
    figure.update_layout(
        title=title,
        height=plot_height + 130,
        margin=dict(t=80, b=50, r=260),
        template="plotly_white",
        hovermode="x",
    )
    return figure


def plot_metrics(
    csv_path: str | os.PathLike, html_path: str | os.PathLike, title: str = ""
) -> None:
    """Write an interactive page of the metrics CSV to `html_path` (atomically).

    The page loads plotly.js from `plotly.min.js` beside it (written once per folder), so it
    opens offline. A CSV with no rows yet gives a page that says so.
    """
    html_path = Path(html_path)
    title = title or Path(csv_path).stem
    frame = read_metrics(csv_path)
    if frame.empty or not group_columns(frame.columns):
        page = (
            '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title></head>\n"
            f"<body><h2>{html.escape(title)}</h2><p>No data yet.</p></body></html>\n"
        )
    else:
        _write_plotly_bundle(html_path.parent)
        page = build_figure(frame, title).to_html(include_plotlyjs="directory", full_html=True)
        page = page.replace("<head>", f"<head><title>{html.escape(title)}</title>", 1)
    _atomic_write_text(html_path, page)


def _write_plotly_bundle(folder: Path) -> None:
    """Write plotly.min.js into `folder` unless present; atomically, since it is never
    rewritten once there (a truncated copy would break every page beside it)."""
    bundle = folder / PLOTLY_BUNDLE
    if not bundle.exists():
        _atomic_write_text(bundle, get_plotlyjs())
