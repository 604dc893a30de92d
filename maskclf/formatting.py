"""Numbers as people read them, for the notebooks' tables and the reports' index page.

One rule set: rates and scores to 3 decimals, counts with thousands separators, intervals as
"[lo, hi]", an estimate with its interval as "0.967 [0.951, 0.985]", a mean with its spread as
"0.975 ± 0.004". Column names lose their underscores so that long headers can wrap.
"""

from __future__ import annotations

import hashlib

import math
import numbers
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from pandas.io.formats.style import Styler

DECIMALS = 3
MISSING = "–"


def number(x: Any, decimals: int = DECIMALS) -> str:
    """One value: an integer with thousands separators, a float to `decimals` places (tiny ones in
    two significant digits), a pair as an interval, a missing value as a dash, anything else as text."""
    if x is None or (isinstance(x, (float, np.floating)) and math.isnan(x)):
        return MISSING
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, numbers.Integral):
        return f"{int(x):,}"
    if isinstance(x, numbers.Real):
        x = float(x)
        if x != 0 and abs(x) < 10 ** -decimals:
            return f"{x:.2g}"
        return f"{x:,.{decimals}f}"
    if isinstance(x, (tuple, list, np.ndarray)) and len(x) == 2:
        return interval(x, decimals)
    return str(x)


def interval(bounds: Sequence[float] | None, decimals: int = DECIMALS) -> str:
    """`(0.950571, 0.98466)` -> "[0.951, 0.985]"."""
    if bounds is None:
        return MISSING
    lo, hi = bounds
    return f"[{number(lo, decimals)}, {number(hi, decimals)}]"


def with_ci(value: float, bounds: Sequence[float] | None, decimals: int = DECIMALS) -> str:
    """An estimate and its interval: "0.967 [0.951, 0.985]" (the estimate alone without one)."""
    return number(value, decimals) if bounds is None else f"{number(value, decimals)} {interval(bounds, decimals)}"


def mean_std(mean: float, std: float, decimals: int = DECIMALS) -> str:
    """"0.975 ± 0.004"."""
    return f"{number(mean, decimals)} ± {number(std, decimals)}"


def header(name: Any) -> str:
    """A column name a header can wrap: underscores become spaces."""
    return str(name).replace("_", " ")


def _index_value(x: Any) -> str:
    """Index labels are keys, not measurements: 0.1 stays 0.1, row 2806 stays 2806."""
    if isinstance(x, (float, np.floating)) and not math.isnan(x):
        return f"{float(x):g}"
    return str(x)


def merge_mean_std(df: pd.DataFrame, decimals: int = DECIMALS) -> pd.DataFrame:
    """Each pair of columns `X_mean`, `X_std` becomes one column "X (mean ± std)", in the place of `X_mean`."""
    out = df.copy()
    for column in list(out.columns):
        name = str(column)
        if name.endswith("_mean") and f"{name[:-5]}_std" in out.columns:
            std = f"{name[:-5]}_std"
            out[column] = [mean_std(m, s, decimals) for m, s in zip(out[column], out[std])]
            out = out.drop(columns=std).rename(columns={column: f"{name[:-5]} (mean ± std)"})
    return out


def table(data: pd.DataFrame | pd.Series, counts: Sequence[str] = (), decimals: int = DECIMALS) -> Styler:
    """A table for display: every cell through `number`, `X_mean`/`X_std` pairs as "mean ± std",
    the columns named in `counts` as whole numbers (for counts a float column holds), headers that wrap.

    A Series becomes a one-column table, so that no `dtype: object` footer is ever shown.
    """
    df = data.to_frame(data.name if data.name is not None else "value") if isinstance(data, pd.Series) else data
    df = merge_mean_std(df, decimals)
    df = df.astype({c: "Int64" for c in counts if c in df.columns})
    df = df.rename(columns=header)
    df.index = df.index.set_names([header(n) if n is not None else None for n in df.index.names])
    return (stable_style(df).format(lambda x: number(x, decimals), na_rep=MISSING)
            .format_index(_index_value, axis=0).format_index(str, axis=1))


def stable_style(df: pd.DataFrame) -> Styler:
    """`df.style` with an id made from the table's contents instead of a random one, so that a rerun writes
    the same HTML (the same table shown twice gets the same id, which is harmless)."""
    digest = hashlib.sha256(df.to_json(orient="split", default_handler=str).encode()).hexdigest()[:10]
    return df.style.set_uuid(f"t{digest}")


def estimates(values: Mapping[str, float], intervals: Mapping[str, Sequence[float]], names: Mapping[str, str],
              column: str = "value [95% CI]") -> Styler:
    """One row per metric in `names` (key -> label): its value from `values`, with its interval
    from `intervals` where there is one."""
    rows = {label: with_ci(values[key], intervals.get(key)) for key, label in names.items()}
    return table(pd.Series(rows, name=column))


def evaluated_on(m: Mapping[str, Any]) -> str:
    """The evaluation sets of a headline (evaluate.headline_metrics), in words."""
    return (f"validation fold: {number(m.get('n_val'))} faces from {number(m.get('n_val_photos'))} photos; "
            f"cross-validation: all {number(m.get('n_faces'))} faces")


def headline_table(m: Mapping[str, Any]) -> Styler:
    """The headline of an evaluation (evaluate.headline_metrics) as a two-column table."""
    ci = m.get("ci95", {})
    cv = m.get("cv", {}).get("mean", {})
    rows = {
        "model": f"{m.get('backbone')} / {m.get('weights')}",
        "split": m.get("split"),
        "evaluated on": evaluated_on(m),
        "accuracy [95% CI]": with_ci(m["accuracy"], ci.get("accuracy")),
        "balanced accuracy [95% CI]": with_ci(m["balanced_accuracy"], ci.get("balanced_accuracy")),
        "ROC AUC [95% CI]": with_ci(m["roc_auc"], ci.get("roc_auc")),
        "5-fold CV mean accuracy": number(cv.get("accuracy")),
    }
    return table(pd.Series(rows, name="value"))
