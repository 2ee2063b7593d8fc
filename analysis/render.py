"""HTML pieces of the report: the page's templates (``analysis/templates``, jinja2 with
autoescape on, so a value from a run, a node name or an error message, is always text),
the table every section uses, and the number format.

    from analysis.render import render, table
    render("sections/cpu.html", cpu=df)      # Markup: safe to put in another template
    table(df, table_id="summary")            # flagged rows shaded, a ⚑ in their flag cell

Sections build their tables as DataFrames of display strings; the templates only lay
them out, so what a number says is decided in Python, where it is tested.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

ENV = Environment(loader=PackageLoader("analysis", "templates"), autoescape=True, undefined=StrictUndefined,
                  trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False)


def render(name: str, **context: Any) -> Markup:
    """A template of ``analysis/templates`` rendered, as markup for a page or section."""
    return Markup(ENV.get_template(name).render(**context))


def num(v: Any, digits: int = 0) -> str:
    """1,234 (``digits`` decimals); '-' for anything that is not a number."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "-"
    if np.isnan(f):
        return "-"
    return f"{f:,.{digits}f}"


def table(df: pd.DataFrame | None, table_id: str | None = None, flag_col: str = "flags") -> Markup:
    """A table whose flagged rows (a non-empty ``flag_col`` cell) are shaded and carry a ⚑."""
    if df is None or df.empty:
        return render("table.html", columns=[], rows=[], table_id=table_id, flag_index=-1)
    flag_index = list(df.columns).index(flag_col) if flag_col in df.columns else -1
    rows = []
    for values in df.itertuples(index=False):
        cells = ["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values]
        rows.append({"cells": cells, "flagged": flag_index >= 0 and bool(cells[flag_index].strip())})
    return render("table.html", columns=[str(c) for c in df.columns], rows=rows, table_id=table_id,
                  flag_index=flag_index)


ENV.globals.update(table=table, num=num)
