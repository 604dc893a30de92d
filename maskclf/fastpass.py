"""The frozen backbone's pass over many faces: bfloat16 through OpenVINO where the CPU computes bfloat16 natively
(AMX or AVX512-BF16), float32 through Keras elsewhere.

The cached features are computed this way, and the evaluation's large passes score the saved
model so (`model.as_deployed`), as its bfloat16 export does. The saved model stays float32
Keras, and `train.run_study` checks on the whole validation fold that it gives the cached
pipeline's labels (`train.BFLOAT16_AGREEMENT`). Each precision has its own feature caches,
cross-validation caches and run folders. MASKCLF_PRECISION=float32 asks for the float32 pass on any CPU.
"""

from __future__ import annotations

import functools
import os
import sys
import weakref
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

PRECISIONS = ("bfloat16", "float32")
OPENVINO_PRECISION = {"bfloat16": "bf16", "float32": "f32"}
"""OpenVINO's name (INFERENCE_PRECISION_HINT) for each precision."""
PRECISION_ENV = "MASKCLF_PRECISION"
"""Environment variable naming the precision wanted (default bfloat16, where the CPU has it)."""


@functools.cache
def feature_precision() -> str:
    """The precision of the backbone pass on this machine: "bfloat16" when wanted (PRECISION_ENV) and OpenVINO runs
    it natively on this CPU, else "float32". A fallback from bfloat16 is said once on stderr."""
    wanted = os.environ.get(PRECISION_ENV) or "bfloat16"
    if wanted not in PRECISIONS:
        raise ValueError(f"{PRECISION_ENV}={wanted!r}: choose one of {', '.join(PRECISIONS)}")
    if wanted == "float32":
        return "float32"
    try:
        import openvino
    except ImportError:
        return _fallback("OpenVINO is not installed (pip install -r requirements.txt)")
    if "BF16" not in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        return _fallback("this CPU has neither AMX nor AVX512-BF16")
    return "bfloat16"


def _fallback(why: str) -> str:
    print(f"maskclf: the backbone pass runs in float32: {why}", file=sys.stderr)
    return "float32"


BFLOAT16_PASS = 2
"""Version of the bfloat16 pass's numbers, in its cache keys and run ids. 2: the pooling is computed in bfloat16 too
and the features come out in bfloat16 (`compile_openvino`'s `low_precision_outputs`), as in the bfloat16 export,
whose pooling feeds the head; 1 had OpenVINO keep the pooling and the residual additions before it in float32."""


def feature_dtype(precision: str) -> np.dtype:
    """The dtype a pass's features are held in, in memory: bfloat16 for the bfloat16 pass, whose outputs are bfloat16
    numbers (nothing is lost, and they take half of float32's memory), float32 for the float32 pass. The products over
    them run in float32 (`logreg.compute_dtype`), and cache files hold float32 either way."""
    from ml_dtypes import bfloat16

    return np.dtype(bfloat16 if precision == "bfloat16" else np.float32)


def batch_invariant(precision: str) -> bool:
    """Whether the pass in `precision` gives each face the same outputs, bit for bit, whatever it is batched with, so
    that a face's outputs cached from one pass may stand for it in another (`features.KnownRows`): the bfloat16 pass
    (OPENVINO_BATCH); not Keras' float32 pass, whose kernels may change with the batch."""
    return precision == "bfloat16"


def precision_key(precision: str) -> dict[str, str | int]:
    """What a cache key or run id adds for `precision`: nothing for float32, so that float32 keys are as before; for
    bfloat16 the pass's version and, where the CPU has no AMX, the instructions that ran it (`bfloat16_isa`)."""
    if precision == "float32":
        return {}
    isa = bfloat16_isa()
    return {"precision": precision, "pass": BFLOAT16_PASS, **({} if isa == "amx" else {"isa": isa})}


@functools.cache
def bfloat16_isa(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The instructions OpenVINO's bfloat16 kernels run on here: "amx" where the CPU has AMX (the amx_bf16 flag in
    `cpuinfo`), "avx512_bf16" elsewhere, "unknown" where the flags cannot be read. The two round differently: the
    study's 5-fold figures moved by one or two faces a fold between a Xeon with AMX and an AMD EPYC without it
    (docs/study.md#caches), so each has its own caches and run folders."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            flags = f.read()
    except OSError:
        return "unknown"
    return "amx" if "amx_bf16" in flags else "avx512_bf16"


OPENVINO_BATCH = 16
"""Faces per inference of the bfloat16 pass, whatever the batches it is given: on the band-pooled ResNet-50 (512
crops, 2-core Xeon with AMX) 199 crops/s and 0.24 GiB of working memory, against 163 crops/s and 0.56 GiB in
inferences of 64; on a 2-core AMD EPYC without AMX, the same speed either way. Each face's outputs are the same,
bit for bit, in an inference of any size."""


def run_pass(model: keras.Model, batches: tf.data.Dataset, precision: str, verbose: int = 0,
             out: np.ndarray | None = None) -> np.ndarray:
    """`model`'s outputs on every batch of raw 0-255 faces, in order, computed in `precision` (bfloat16: in
    inferences of at most OPENVINO_BATCH faces). `out`: an array of their shape to fill and return, so that no second
    copy of them is made: float32, or for the bfloat16 pass `feature_dtype`'s bfloat16 (each inference's outputs are
    written into it)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "float32":
        outputs = model.predict(batches, verbose=verbose)
        if out is None:
            return outputs
        out[...] = outputs
        return out
    infer = _compiled(model, precision)
    parts = (batch[i:i + OPENVINO_BATCH] for batch in batches.as_numpy_iterator()
             for i in range(0, len(batch), OPENVINO_BATCH))
    if out is None:
        outputs = [infer(part) for part in parts]
        return np.concatenate(outputs) if outputs else np.empty((0, *model.output.shape[1:]), np.float32)
    filled = 0
    for part in parts:
        out[filled:filled + len(part)] = infer(part)
        filled += len(part)
    if filled != len(out):
        raise ValueError(f"the pass gave {filled} outputs for an array of {len(out)}")
    return out


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _compiled(model: keras.Model, precision: str):
    """`compile_openvino(model, precision)`, converted and compiled once per model and precision: the views of one
    feature cache share it, and it goes with the model."""
    per_model = _COMPILED.setdefault(model, {})
    if precision not in per_model:
        per_model[precision] = compile_openvino(model, precision, low_precision_outputs=True)
    return per_model[precision]


def release(model: keras.Model) -> None:
    """Drop `model`'s compiled passes now, not when `model` is collected: for the band-pooled ResNet-50 at a batch of
    64, about 0.6 GiB that would otherwise stay held through cross-validation (or, for a model that lives on, for
    good)."""
    _COMPILED.pop(model, None)


def openvino_graph(model: keras.Model):
    """`model` (one image input of any batch size, one output) as an OpenVINO model, converted in memory from its
    TensorFlow graph."""
    import openvino as ov
    import tensorflow as tf

    spec = tf.TensorSpec([None, *model.input.shape[1:]], tf.float32)
    return ov.convert_model(tf.function(lambda x: model(x, training=False)).get_concrete_function(spec))


def compile_openvino(graph, precision: str, threads: int | None = None, low_precision_outputs: bool = False):
    """A Keras model, an OpenVINO model or an OpenVINO IR file's path, compiled for this CPU in `precision`: a
    function from a float32 batch to its float32 outputs. `threads` None: one per core.

    OpenVINO keeps in float32 every node between a float32 output and the last convolution or matrix product before
    it. `low_precision_outputs` (for the features, not for probabilities) makes the outputs bfloat16 instead, so
    that the whole graph runs in `precision`: for the band-pooled ResNet-50, a third more crops per second here."""
    import keras
    import openvino as ov

    if isinstance(graph, keras.Model):
        graph = openvino_graph(graph)
    elif isinstance(graph, (str, os.PathLike)):
        graph = ov.Core().read_model(str(graph))
    bfloat16_out = low_precision_outputs and precision == "bfloat16"
    if bfloat16_out:
        outputs = ov.preprocess.PrePostProcessor(graph)
        for i in range(len(graph.outputs)):
            outputs.output(i).tensor().set_element_type(ov.Type.bf16)
        graph = outputs.build()
    request = openvino_request(graph, precision, threads)

    def infer(batch: np.ndarray) -> np.ndarray:
        out = request.infer([np.ascontiguousarray(batch, np.float32)])[0]
        return bfloat16_to_float32(out) if bfloat16_out else np.array(out, np.float32)

    return infer


def openvino_request(graph, precision: str, threads: int | None = None):
    """An inference request of the OpenVINO model `graph` compiled for this CPU in `precision`, tuned for latency;
    `threads` None: one per core. The one place this project's OpenVINO settings live."""
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISION[precision], "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return ov.Core().compile_model(graph, "CPU", config).create_infer_request()


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 values (OpenVINO hands them over as 16-bit words) as float32: exact, the word is the float32's top half."""
    return (np.asarray(bits).view(np.uint16).astype(np.uint32) << 16).view(np.float32)
