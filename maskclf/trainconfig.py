"""A training run's configuration (`TrainConfig`) and its names: a readable label, an identity, a run id.

The defaults live in notebooks/params.yaml, read by maskclf.config."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .backbones import Weights, get_backbone, weights_id
from .config import PARAM_CHOICES, resolve_params
from .fastpass import precision_key
from .logreg import solver_identity
from .paths import project_path

POOLINGS = PARAM_CHOICES["pooling"]
HEADS = PARAM_CHOICES["head"]
LABEL_SETS = PARAM_CHOICES["labels"]


@dataclass
class TrainConfig:
    """Everything that defines one training run (also written to the run's config.json).

    No field has a default here: they live in notebooks/params.yaml (section `train`);
    build a configuration with `TrainConfig.from_params`, which fills in what is not given.
    """

    backbone: str  # a registry name, or several joined by "+" (features concatenated)
    weights: Weights  # "imagenet", a weights file, or None / "none" (random)
    image_size: int | None  # None: the backbone's native size (the largest, for several)
    epochs: int
    batch_size: int
    learning_rate: float
    dropout: float
    class_weight: bool
    incorrect_weight: float  # the incorrectly worn mask's loss weight, times class_weight's (labels="original")
    patience: int
    fine_tune_blocks: int  # top blocks to unfreeze; 0: frozen backbone only
    fine_tune_epochs: int
    fine_tune_learning_rate: float
    augment_views: int  # augmented views per crop, cached (1: a horizontal flip)
    jitter_views: int  # re-cuts per face from its photo with a jittered box, cached (maskclf.framing)
    detector_views: int  # 1: a view cut with the default detector's box, for the faces it finds (maskclf.detector_views)
    verifier: int  # 1: a face verifier on the detector's low-score boxes, with the saved model (maskclf.candidates)
    pooling: str  # "avg": average of the last feature map; "stages": average and max of every stage's output;
    # "bands": "stages" plus average and max of BANDS horizontal bands of every stage output below the last
    head: str  # "adam": the study's training; "lbfgs": logistic regression fitted to convergence
    head_c: float  # inverse L2 strength of the "lbfgs" head, as scikit-learn's C
    labels: str  # "original": train on the 3 annotated classes, merge them into the two at the output
    min_face: int  # leave out faces whose short side is under this many pixels (the study's protocol: 32)
    val_fold: int
    train_seed: int  # weight initialisation, shuffling, augmented views, early-stopping split

    def __post_init__(self) -> None:
        specs = [get_backbone(name) for name in self.backbones]
        if self.verifier not in (0, 1):
            raise ValueError(f"verifier must be 0 or 1, got {self.verifier!r}")
        self.image_size = self.image_size or max(spec.image_size for spec in specs)
        if str(self.weights).lower() == "none":
            self.weights = None
        if self.weights not in (None, "imagenet"):
            self.weights = str(project_path(self.weights))
            if len(specs) > 1:
                raise ValueError("a weights file needs a single backbone")
        for name, value, allowed in (("pooling", self.pooling, POOLINGS), ("head", self.head, HEADS),
                                     ("labels", self.labels, LABEL_SETS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.fine_tune_blocks and (len(specs) > 1 or self.pooling != "avg"):
            raise ValueError("fine-tuning needs a single backbone and pooling='avg'")

    @property
    def backbones(self) -> list[str]:
        """The backbone names, in order."""
        return self.backbone.split("+")

    @classmethod
    def from_params(cls, params: Mapping[str, Any], path: str | Path | None = None) -> TrainConfig:
        """A configuration from params.yaml's `train` section, updated with the non-None values of `params`."""
        resolved = resolve_params("02_train", params, path)
        return cls(**{f.name: resolved[f.name] for f in dataclasses.fields(cls)})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_label(config: TrainConfig) -> str:
    """Short name of a configuration, e.g. `efficientnet_lite0-imagenet-ft2-aug1`.

    Non-default pooling, head and labels add `stages` or `bands`, `lbfgs` and `original`.
    """
    weights = "random" if config.weights is None else "imagenet" if config.weights == "imagenet" else "file"
    parts = [config.backbone, weights]
    if config.fine_tune_blocks:
        parts.append(f"ft{config.fine_tune_blocks}")
    if config.augment_views:
        parts.append(f"aug{config.augment_views}")
    if config.jitter_views:
        parts.append(f"jit{config.jitter_views}")
    if config.detector_views:
        parts.append("det")
    if config.min_face:
        parts.append(f"min{config.min_face}px")
    if config.verifier:
        parts.append("verified")
    if config.incorrect_weight != 1:
        parts.append(f"incorrect{config.incorrect_weight:g}")
    parts += [value for value, default in ((config.pooling, "avg"), (config.head, "adam"), (config.labels, "binary"))
              if value != default]
    return "-".join(parts)


def config_identity(config: TrainConfig) -> dict[str, Any]:
    """Every field of a configuration as it identifies a result: a weights file by its contents, not its path."""
    return {**config.to_dict(), "weights": weights_id(config.weights)}


def run_id(config: TrainConfig, data_sha256: str, precision: str = "float32") -> str:
    """Short hash of everything that makes a run: every field of the configuration (a weights file by its
    contents), the extraction's hash, the backbone pass's precision and the head solver's identity. config.json
    records all of it."""
    blob = {**config_identity(config), "data_sha256": data_sha256, **precision_key(precision),
            **solver_identity(config.head)}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:8]


def default_run_name(config: TrainConfig, data_sha256: str, precision: str = "float32") -> str:
    """Run folder name: a readable label and the run's hash, e.g. `efficientnet_lite0-imagenet-ft2-aug1-fold0-3f9a2c1d`."""
    return f"{config_label(config)}-fold{config.val_fold}-{run_id(config, data_sha256, precision)}"
