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

Every value, default or given, is checked against its entry in `notebooks/params.schema.yaml`
(`check_param`: type, range, choices) by `load_params` and `resolve_params`, so a bad value is
refused, naming the parameter and what it allows, before any notebook or training starts.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from .paths import NOTEBOOKS_DIR

PARAMS_FILE = NOTEBOOKS_DIR / "params.yaml"
SCHEMA_FILE = NOTEBOOKS_DIR / "params.schema.yaml"
"""The type and allowed values of every parameter (`check_param`): one entry per name of params.yaml."""
STAGES = {"01_extract": "extract", "02_train": "train", "03_evaluate": "evaluate",
          "04_error_analysis": "error_analysis"}
"""Notebook -> its section of params.yaml; every notebook also takes the `common` section."""
COMMON = "common"
SCHEMA: dict[str, dict[str, Any]] = yaml.safe_load(SCHEMA_FILE.read_text(encoding="utf-8"))
PARAM_CHOICES: dict[str, tuple[str, ...]] = {
    name: tuple(entry["choices"]) for name, entry in SCHEMA.items() if entry["type"] == "str" and "choices" in entry
}
"""The values a parameter that names one of a few ways may take (from SCHEMA; the CLI lists them)."""
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
        check_param(name, value)
    return params


def stage_defaults(notebook: str, path: str | Path | None = None) -> dict[str, Any]:
    """The defaults of one notebook (e.g. "02_train"): the common section and its own."""
    sections = read_sections(path)
    return {**sections.get(COMMON, {}), **sections.get(STAGES[notebook], {})}


def resolve_params(notebook: str, given: Mapping[str, Any], path: str | Path | None = None) -> dict[str, Any]:
    """One notebook's parameters: each value in `given` that is not None, else the default; all checked (`check_param`)."""
    defaults = stage_defaults(notebook, path)
    resolved = {name: default if given.get(name) is None else given[name] for name, default in defaults.items()}
    for name, value in resolved.items():
        check_param(name, value)
    return resolved


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


def check_param(name: str, value: Any) -> None:
    """ParamsError naming the parameter and its allowed values unless `value` is JSON-like (`check_value`)
    and fits the parameter's SCHEMA entry."""
    check_value(name, value)
    entry = SCHEMA.get(name)
    if entry is None:
        raise ParamsError(f"parameter {name!r} has no entry in {SCHEMA_FILE.name}; give it a type and allowed values")
    if value is None:
        if not entry.get("nullable"):
            raise ParamsError(f"parameter {name!r}: null is not allowed; expected {describe(entry)}")
        return
    problem = _TYPE_CHECKS[entry["type"]](value, entry)
    if problem is None and "choices" in entry and entry["type"] == "str" and value not in entry["choices"]:
        problem = "not one of the choices"
    if problem is None and isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < entry.get("min", -math.inf) or value > entry.get("max", math.inf):
            problem = "out of range"
    if problem:
        raise ParamsError(f"parameter {name!r}: {value!r:.80} is {problem}; expected {describe(entry)}")


def describe(entry: dict[str, Any]) -> str:
    """A SCHEMA entry in words, e.g. "an integer from 1 to 10000"."""
    words = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
             "path": "a file or folder name", "dataset_dir": "a folder holding images/ and annotations/",
             "weights": "imagenet, none or a weights file", "backbone": "backbone names joined by '+'",
             "label_map": "a mapping of original class to label", "configurations": "a list of mappings of train parameters"}
    text = words[entry["type"]]
    if "choices" in entry:
        text += f" from {', '.join(map(str, entry['choices']))}"
    if "min" in entry and "max" in entry:
        text += f" from {entry['min']} to {entry['max']}"
    if "pattern" in entry:
        text += f" matching {entry['pattern']}"
    return text + (", or null" if entry.get("nullable") else "")


def _is_int(value: Any, entry: dict[str, Any]) -> str | None:
    return None if isinstance(value, int) and not isinstance(value, bool) else "not an integer"


def _is_float(value: Any, entry: dict[str, Any]) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "not a number"
    return None if math.isfinite(value) else "not a finite number"


def _is_bool(value: Any, entry: dict[str, Any]) -> str | None:
    return None if isinstance(value, bool) else "not true or false"


def _is_str(value: Any, entry: dict[str, Any]) -> str | None:
    if not isinstance(value, str) or not value:
        return "not a non-empty string"
    return None if "pattern" not in entry or re.fullmatch(entry["pattern"], value) else "not an allowed name"


def _is_path(value: Any, entry: dict[str, Any]) -> str | None:
    return None if isinstance(value, str) and value and "\0" not in value and len(value) < 4096 else "not a path"


def _is_dataset_dir(value: Any, entry: dict[str, Any]) -> str | None:
    from .paths import project_path

    if _is_path(value, entry):
        return "not a path"
    folder = project_path(value)
    return None if (folder / "images").is_dir() and (folder / "annotations").is_dir() else \
        "not a Face Mask Detection folder (no images/ and annotations/ inside)"


def _is_weights(value: Any, entry: dict[str, Any]) -> str | None:
    from .paths import project_path

    if _is_path(value, entry):
        return "not a name or a path"
    return None if value.lower() in ("imagenet", "none") or project_path(value).is_file() else "not an existing weights file"


def _is_backbone(value: Any, entry: dict[str, Any]) -> str | None:
    if _is_str(value, entry):
        return "not a string"
    unknown = [part for part in value.split("+") if part not in entry["choices"]]
    return f"not made of known backbones (unknown backbone {', '.join(map(repr, unknown))})" if unknown else None


def _is_label_map(value: Any, entry: dict[str, Any]) -> str | None:
    from .data import check_label_map

    try:
        check_label_map(value)
    except ValueError as exc:
        return f"not a usable label map ({exc})"
    return None


MAX_LABEL_CHARS = 100
"""Longest `label` of a `compare` configuration (its row's name in the ablation table)."""


def _is_configurations(value: Any, entry: dict[str, Any]) -> str | None:
    if not isinstance(value, list) or len(value) > entry.get("max", math.inf):
        return f"not a list of at most {entry.get('max')} configurations"
    train = set(read_sections().get("train", {})) - {"compare", "cross_validate"}
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            return f"not a list of mappings (item {i} is not one)"
        for key, setting in item.items():
            if key == "label":
                if not isinstance(setting, str) or not 0 < len(setting) <= MAX_LABEL_CHARS:
                    return f"not valid: item {i}'s label is not a name of 1 to {MAX_LABEL_CHARS} characters"
                continue
            if key not in train:
                return f"not valid: item {i} names {key!r}, not a train parameter"
            try:
                check_param(key, setting)
            except ParamsError as exc:
                return f"not valid: item {i}: {exc}"
    return None


_TYPE_CHECKS = {"int": _is_int, "float": _is_float, "bool": _is_bool, "str": _is_str, "path": _is_path,
                "dataset_dir": _is_dataset_dir, "weights": _is_weights, "backbone": _is_backbone,
                "label_map": _is_label_map, "configurations": _is_configurations}


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
