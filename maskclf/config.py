"""The study's parameters: their defaults live once, in `notebooks/params.yaml`, and are resolved here.

The file has one section per stage (`common`, `extract`, `train`, `evaluate`,
`error_analysis`); a name appears in one section only, so `-p NAME=VALUE` is never
ambiguous. Every entry point resolves its parameters with `resolve_params`:

- a notebook opened in JupyterLab: its `parameters` cell sets every name to None, and
  its first code cell calls `resolve_params(stage, globals())`;
- papermill (and `python -m maskclf reports`): the injected values replace those Nones;
- the command line: argparse's values, where given, replace the defaults the same way.

None always means "the default in params.yaml"; a parameter whose default is itself null
keeps null's documented meaning (for example `image_size: null`, the backbone's own size).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Mapping

import yaml

from .paths import NOTEBOOKS_DIR

PARAMS_FILE = NOTEBOOKS_DIR / "params.yaml"
STAGES = {"01_extract": "extract", "02_train": "train", "03_evaluate": "evaluate",
          "04_error_analysis": "error_analysis"}
"""Notebook -> its section of params.yaml; every notebook also takes the `common` section."""
COMMON = "common"
PARAM_CHOICES: dict[str, tuple[str, ...]] = {
    "pooling": ("avg", "stages", "bands"),
    "head": ("adam", "lbfgs"),
    "labels": ("binary", "original"),
}
"""The values a parameter that names one of a few ways may take (TrainConfig checks them; the CLI lists them)."""
MAX_PARAMS_BYTES = 1 << 20
"""Refuse a parameter file larger than this (notebooks/params.yaml is 3 kB)."""
MAX_PARAM_VALUES = 100_000
"""Refuse a parameter made of more values than this (a YAML alias bomb expands without end)."""


class ParamsError(ValueError):
    """A parameter file or override is malformed; the message names the file or the parameter."""


def read_sections(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The sections of a parameter file, checked: mappings, and every name in one section only."""
    path = Path(path or PARAMS_FILE)
    sections = _parse_yaml(_read_params_file(path), str(path)) or {}
    if not isinstance(sections, dict) or not all(isinstance(v, dict) for v in sections.values()):
        raise ParamsError(f"{path}: expected sections ({COMMON}, {', '.join(STAGES.values())}) of name: value")
    unknown = set(sections) - {COMMON, *STAGES.values()}
    if unknown:
        raise ParamsError(f"{path}: unknown sections {sorted(unknown)}")
    seen: dict[str, str] = {}
    for section, values in sections.items():
        for name in values:
            if name in seen:
                raise ParamsError(f"{path}: {name!r} is in both {seen[name]!r} and {section!r}")
            seen[name] = section
    return sections


def load_params(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every parameter of every stage (one flat mapping), updated with `overrides` of known names."""
    params = {name: value for values in read_sections(path).values() for name, value in values.items()}
    unknown = set(overrides or {}) - set(params)
    if unknown:
        raise ParamsError(f"unknown parameter(s) {sorted(unknown)}; known: {', '.join(sorted(params))}")
    params = {**params, **(overrides or {})}
    for name, value in params.items():
        check_value(name, value)
    return params


def stage_defaults(notebook: str, path: str | Path | None = None) -> dict[str, Any]:
    """The defaults of one notebook (e.g. "02_train"): the common section and its own."""
    sections = read_sections(path)
    return {**sections.get(COMMON, {}), **sections.get(STAGES[notebook], {})}


def resolve_params(notebook: str, given: Mapping[str, Any], path: str | Path | None = None) -> dict[str, Any]:
    """One notebook's parameters: each value in `given` that is not None, else the default."""
    defaults = stage_defaults(notebook, path)
    return {name: default if given.get(name) is None else given[name] for name, default in defaults.items()}


def parse_override(text: str) -> tuple[str, Any]:
    """`name=value` with value parsed as YAML (numbers, booleans, null, lists)."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name.strip(), _parse_yaml(value, f"-p {name.strip()}")
    except ParamsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def check_value(name: str, value: Any) -> None:
    """ParamsError unless `value` is JSON-like (strings, numbers, booleans, null, lists, string-keyed
    mappings) and made of at most MAX_PARAM_VALUES values."""
    pending, count = [value], 0
    while pending:
        item = pending.pop()
        count += 1
        if count > MAX_PARAM_VALUES:
            raise ParamsError(f"parameter {name!r}: more than {MAX_PARAM_VALUES} values")
        if isinstance(item, dict) and all(isinstance(k, str) for k in item):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif item is not None and not isinstance(item, (str, bool, int, float)):
            raise ParamsError(
                f"parameter {name!r}: {item!r} is a {type(item).__name__}; values must be strings, numbers, "
                "booleans, null, lists or mappings with string keys (quote dates and other such values)"
            )


def _read_params_file(path: Path) -> str:
    if not path.is_file():
        raise ParamsError(f"{path}: parameter file not found")
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_PARAMS_BYTES + 1)
        if len(raw) > MAX_PARAMS_BYTES:
            raise ParamsError(f"{path}: larger than the limit of {MAX_PARAMS_BYTES} bytes for a parameter file")
        return raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ParamsError(f"{path}: unreadable ({exc})") from exc


def _parse_yaml(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as exc:
        raise ParamsError(f"{where}: not valid YAML/JSON ({exc})") from exc
