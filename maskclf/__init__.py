"""maskclf: does each face in a photo wear a mask? Thin package behind the study's notebooks."""

from .native_logs import quiet_tensorflow

quiet_tensorflow()  # before anything imports TensorFlow: no C++ log lines in notebooks, reports or commands

__version__ = "0.1.0"

CLASS_NAMES: tuple[str, str] = ("with_mask", "without_mask")
"""Binary labels in model output order; index 1 (`without_mask`) is the positive class."""

POSITIVE: str = CLASS_NAMES[1]
"""The class a compliance check looks for: `without_mask`."""
