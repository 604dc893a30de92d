"""What the model answers for a face, from the probabilities it outputs.

A run's model outputs softmax probabilities over the classes it was trained on
(`config.json`'s `class_names`: the two binary classes, or the three annotated ones).
`reports_as` (also in `config.json`) maps each of them to the study's binary class, so that
a mask worn incorrectly counts as `without_mask`. From those probabilities come:

- the study's binary answer: P(without_mask), the sum of the classes that report as it, and
  its label at a threshold;
- the three-way answer users see (`with_mask`, `mask_incorrect`, `without_mask`), when the
  model was trained on the three annotated classes. It agrees with the binary label: a face
  labelled `with_mask` at the threshold is `with_mask`; otherwise it is the likelier of
  `mask_incorrect` and `without_mask`.

A run with a face verifier (`config.json`'s `face_verifier`) outputs one more column after the
classes: P(face), that a candidate box holds a face at all. `keep_by_rule` decides from it and
the detector's score which candidates are faces (maskclf.candidates fits the rule).

This module is the only one that turns model outputs into answers; evaluation, export,
predict, video and the demo call it.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from . import CLASS_NAMES, POSITIVE

INCORRECT = "mask_weared_incorrect"
"""The annotated class of a mask worn below the nose or chin."""
THREE_WAY = ("with_mask", "mask_incorrect", "without_mask")
"""The three-way labels users see, in the order of `three_way_probabilities`' columns."""
ANNOTATED_AS = {"with_mask": "with_mask", INCORRECT: "mask_incorrect", "without_mask": "without_mask"}
"""Annotated class -> its three-way label."""


def reports_as(config: Mapping[str, Any]) -> dict[str, str]:
    """Each output class of a run -> the binary class it counts as (identity when not recorded)."""
    return dict(config.get("reports_as") or {name: name for name in config["class_names"]})


def check_reports_as(class_names: Sequence[str], mapping: Any) -> str | None:
    """The problem with a run's `reports_as`, or None: it must map every class name to a binary class, and
    both binary classes must be reached."""
    if not isinstance(mapping, dict) or set(mapping) != set(class_names):
        return f"'reports_as' must map each of {list(class_names)} to one of {list(CLASS_NAMES)}, got {mapping!r}"
    if set(mapping.values()) != set(CLASS_NAMES):
        return f"'reports_as' must reach both of {list(CLASS_NAMES)}, got {mapping!r}"
    return None


def output_width(config: Mapping[str, Any]) -> int:
    """How many columns a run's model outputs: one per class, and P(face) when it has a verifier."""
    return len(config["class_names"]) + (1 if config.get("face_verifier") else 0)


def class_probabilities(probs: np.ndarray, config: Mapping[str, Any]) -> np.ndarray:
    """(N, classes) the model's probabilities of its `class_names`, without P(face)."""
    return np.asarray(probs, dtype=np.float64)[:, :len(config["class_names"])]


def face_probabilities(probs: np.ndarray, config: Mapping[str, Any]) -> np.ndarray | None:
    """(N,) P(face) of each candidate, or None for a run without a verifier."""
    if not config.get("face_verifier"):
        return None
    return np.asarray(probs, dtype=np.float64)[:, len(config["class_names"])]


LOGIT_EPSILON = 1e-6
"""Probabilities are clipped to [eps, 1 - eps] before their logit."""


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)), finite for every p in [0, 1]."""
    p = np.clip(np.asarray(p, dtype=np.float64), LOGIT_EPSILON, 1 - LOGIT_EPSILON)
    return np.log(p / (1 - p))


RULE_KEYS = ("score", "face", "bias")
"""The weights of a verifier's rule (config.json's `face_verifier.rule`), in `keep_by_rule`'s order."""


def keep_by_rule(scores: np.ndarray, p_face: np.ndarray, rule: Mapping[str, float]) -> np.ndarray:
    """Which candidates are faces: rule["score"] * logit(detector score) + rule["face"] * logit(P(face)) +
    rule["bias"] >= 0."""
    z = rule["score"] * logit(scores) + rule["face"] * logit(p_face) + rule["bias"]
    return np.asarray(z >= 0, dtype=bool)


def binary_probabilities(probs: np.ndarray, config: Mapping[str, Any]) -> np.ndarray:
    """(N, 2) probabilities of CLASS_NAMES: the class columns summed by the class they report as, in [0, 1]."""
    probs = class_probabilities(probs, config)
    mapping = reports_as(config)
    merge = np.array([[float(mapping[name] == target) for target in CLASS_NAMES] for name in config["class_names"]])
    return np.clip(probs @ merge, 0.0, 1.0)


def p_without_mask(probs: np.ndarray, config: Mapping[str, Any]) -> np.ndarray:
    """(N,) P(without_mask): the study's score of each face."""
    return binary_probabilities(probs, config)[:, CLASS_NAMES.index(POSITIVE)]


SHOWN_DECIMALS = 6
"""Probabilities are shown to this many decimals, and the labels follow what is shown."""


def binary_labels(p_without: np.ndarray, threshold: float) -> list[str]:
    """The binary label of each face: `without_mask` when P(without_mask), as shown, is at least `threshold`."""
    return [CLASS_NAMES[int(p >= threshold)] for p in np.round(np.asarray(p_without, dtype=np.float64), SHOWN_DECIMALS)]


def kept_as_shown(scores: np.ndarray, p_face: np.ndarray, rule: Mapping[str, float]) -> np.ndarray:
    """`keep_by_rule` on P(face) as shown (SHOWN_DECIMALS): the decision a deployed run makes and reports."""
    return keep_by_rule(scores, np.round(np.asarray(p_face, dtype=np.float64), SHOWN_DECIMALS), rule)


def has_three_way(config: Mapping[str, Any]) -> bool:
    """Whether the run's model was trained on the three annotated classes."""
    return set(config["class_names"]) == set(ANNOTATED_AS)


def three_way_probabilities(probs: np.ndarray, config: Mapping[str, Any]) -> np.ndarray | None:
    """(N, 3) probabilities of THREE_WAY, or None for a model trained on the binary classes."""
    if not has_three_way(config):
        return None
    names = list(config["class_names"])
    order = [names.index(annotated) for annotated in ANNOTATED_AS]
    return class_probabilities(probs, config)[:, order]


def three_way_labels(three: np.ndarray, p_without: np.ndarray, threshold: float) -> list[str]:
    """The three-way label of each face, consistent with its binary label at `threshold`."""
    incorrect, without = THREE_WAY.index("mask_incorrect"), THREE_WAY.index("without_mask")
    labels = []
    for row, p in zip(np.asarray(three), np.asarray(p_without)):
        if p < threshold:
            labels.append("with_mask")
        else:
            labels.append(THREE_WAY[incorrect] if row[incorrect] > row[without] else THREE_WAY[without])
    return labels
