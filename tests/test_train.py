"""Backbones, cached features and training, on tiny synthetic crops with random weights."""

from __future__ import annotations

import dataclasses
import json
import re

import keras
import numpy as np
import pytest
import yaml

from maskclf import backbones, crossval, featureset, network, train, trainconfig
from maskclf.answers import p_without_mask
from maskclf.backbones import BackboneWeightsError, build_backbone
from maskclf.data import DataError, extract_faces, read_manifest
from maskclf.evaluate import encode_labels
from maskclf import runs
from maskclf.images import load_crop
from maskclf.labels import class_weights, output_classes, training_labels
from maskclf.runs import load_run

STUDY_HEAD = dict(pooling="avg", head="adam", labels="binary", augment_views=0, jitter_views=0, detector_views=0,
                  incorrect_weight=1.0, fine_tune_blocks=0, verifier=0)
"""The study's head on one backbone: what the tests train unless they say otherwise."""
TINY = dict(backbone="efficientnet_lite0", weights="imagenet", image_size=32, epochs=3, fine_tune_epochs=2, batch_size=16,
            patience=2, **STUDY_HEAD)


@pytest.fixture
def faces(extracted_faces):
    return extracted_faces


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def _fs(faces, cache, **overrides):
    config = trainconfig.TrainConfig.from_params({**TINY, **overrides})
    return featureset.prepare_features(read_manifest(faces), faces, config, cache_dir=cache, verbose=0)


def test_feature_shapes(faces, cache):
    n = len(read_manifest(faces))
    frozen = _fs(faces, cache)
    assert frozen.upper is None and frozen.pooled.shape == (1, n, 1280) and frozen.activations is frozen.pooled
    tuned = _fs(faces, cache, fine_tune_blocks=1, augment_views=2)
    assert tuned.views == ["none", "flip", "random1"]
    assert tuned.activations.shape[:2] == (3, n) and tuned.activations.ndim == 5
    assert tuned.pooled.shape == (3, n, 1280)
    assert not np.allclose(tuned.activations[0], tuned.activations[2]), "random views differ (synthetic faces are symmetric)"


def test_cache_hit_miss_and_invalidation(faces, cache, tmp_path, voc_master):
    first = _fs(faces, cache)
    again = _fs(faces, cache)
    assert not first.cache_hit and again.cache_hit
    np.testing.assert_array_equal(first.pooled, again.pooled)
    assert len(list(cache.glob("*.npz"))) == 1
    other = _fs(faces, cache, image_size=48)
    assert not other.cache_hit, "another input size is another configuration"
    moved = tmp_path / "faces2"
    extract_faces(voc_master, moved, margin=0.3, progress=False)  # same crop names, other pixels
    changed = _fs(moved, cache)
    assert not changed.cache_hit and changed.data_sha256 != first.data_sha256


def test_a_cached_view_is_read_in_place_and_a_malformed_one_is_computed_again(tmp_path):
    from maskclf import features

    names = ["a.png", "b.png"]
    outputs = np.arange(2 * 5, dtype=np.float32).reshape(2, 5)
    good = tmp_path / "good.npz"
    np.savez(good, outputs=outputs, paths=np.array(names), key="{}")
    offset, shape = features._cached_layout(good, names)
    into = np.zeros((3, *shape), np.float32)
    features._read_into(good, offset, into[1])
    np.testing.assert_array_equal(into[1], outputs)
    assert not into[0].any() and not into[2].any(), "only its own place is written"
    float64 = tmp_path / "float64.npz"
    np.savez(float64, outputs=outputs.astype(np.float64), paths=np.array(names), key="{}")
    assert features._cached_layout(float64, names) is None, "not the cached dtype"
    assert features._cached_layout(good, ["a.png", "c.png"]) is None, "the outputs of other crops"
    packed = tmp_path / "packed.npz"
    np.savez_compressed(packed, outputs=outputs, paths=np.array(names), key="{}")
    assert features._cached_layout(packed, names) is None, "compressed: not readable in place"
    short = tmp_path / "short.npz"
    np.savez(short, outputs=np.zeros((2, 5), np.float32), paths=np.array(names), key="{}")
    blob = short.read_bytes().replace(b"(2, 5)", b"(9, 5)", 1)  # a header that promises more than the file holds
    short.write_bytes(blob)
    assert features._cached_layout(short, names) is None


def test_a_cached_view_is_read_into_bfloat16_row_block_by_row_block(tmp_path, monkeypatch):
    """A bfloat16 pass's features (bfloat16 numbers, cached as float32) are held in bfloat16: read exactly, in blocks
    of READ_ROWS rows, the last one short."""
    from ml_dtypes import bfloat16

    from maskclf import features

    monkeypatch.setattr(features, "READ_ROWS", 2)
    names = ["a.png", "b.png", "c.png"]
    outputs = (np.random.default_rng(0).uniform(0, 50, (3, 7)).astype(bfloat16)).astype(np.float32)
    cached = tmp_path / "view.npz"
    np.savez(cached, outputs=outputs, paths=np.array(names), key="{}")
    offset, shape = features._cached_layout(cached, names)
    into = np.zeros((2, *shape), bfloat16)
    features._read_into(cached, offset, into[1])
    assert into.dtype == bfloat16
    np.testing.assert_array_equal(into[1].astype(np.float32), outputs)
    assert not into[0].astype(np.float32).any(), "only its own place is written"


def test_one_backbone_pass_feeds_every_pooling(faces, cache):
    """avg and stages are column subsets of the cached band features: one pass, equal values."""
    manifest = read_manifest(faces)
    crops = np.stack([load_crop(p, 32) for p in manifest["crop_file"]]).astype("float32")
    first = _fs(faces, cache, pooling="bands")
    assert not first.cache_hit
    for pooling in ("avg", "stages"):
        fs = _fs(faces, cache, pooling=pooling)
        assert fs.cache_hit, f"{pooling} reuses the band pass"
        direct = fs.frozen.predict(crops, verbose=0)  # the pooling's own graph, as saved in the model
        assert fs.pooled.shape == (1, len(manifest), direct.shape[-1])
        np.testing.assert_allclose(fs.pooled[0], direct, rtol=1e-5, atol=1e-5)
    assert len(list(cache.glob("*.npz"))) == 1
    assert list(network.pooling_columns([2, 3], "avg")) == [20, 21, 22]  # stage 1: avg 0-1, max 2-3, bands 4-19
    assert list(network.pooling_columns([2, 3], "stages")) == [0, 1, 2, 3, 20, 21, 22, 23, 24, 25]


ENSEMBLE = dict(backbone="efficientnet_lite0+efficientnet_lite1", pooling="stages", head="lbfgs", labels="original")


@pytest.mark.parametrize("overrides", [{}, {"fine_tune_blocks": 1}, ENSEMBLE, {**ENSEMBLE, "head": "adam"},
                                       {**ENSEMBLE, "pooling": "bands"}],
                         ids=["frozen", "fine-tuned", "ensemble-lbfgs", "ensemble-adam", "ensemble-bands"])
def test_end_to_end_model_equals_head_on_cached_features(faces, cache, overrides):
    fs = _fs(faces, cache, **overrides)
    manifest = read_manifest(faces)
    result = crossval.train_fold(fs, manifest, 0)
    crops = np.stack([load_crop(p, 32) for p in manifest["crop_file"].iloc[result.val_index]]).astype("float32")
    labels = training_labels(manifest, fs.config.labels)
    p = result.model.predict(crops, verbose=0)
    assert p.shape == (len(crops), len(labels.names))  # the trained classes: 3 with labels="original"
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(p_without_mask(p, output_classes(labels)), result.val_probabilities, atol=1e-4)


def test_same_seed_same_metrics(faces, cache):
    manifest = read_manifest(faces)
    runs = [crossval.train_fold(_fs(faces, cache, train_seed=7), manifest, 0) for _ in range(2)]
    np.testing.assert_array_equal(runs[0].val_probabilities, runs[1].val_probabilities)
    assert runs[0].history == runs[1].history
    other = crossval.train_fold(_fs(faces, cache, train_seed=8), manifest, 0)
    assert not np.array_equal(other.val_probabilities, runs[0].val_probabilities)


def test_cross_validation_and_saved_run(faces, cache, tmp_path):
    config = trainconfig.TrainConfig.from_params(TINY)
    study = train.run_study(config, faces, tmp_path, "run", cross_validate=True, cache_dir=cache)
    result, cv = study.result, study.cv
    assert study.run_dir == tmp_path / "run" and study.saved == "created"
    assert [f["fold"] for f in cv["per_fold"]] == [0, 1, 2, 3, 4]
    oof = np.array(cv["oof_probability"])
    assert not np.isnan(oof).any(), "every face is scored exactly once, by the fold that held it out"
    model, run_config = load_run(tmp_path / "run")
    assert run_config["backbone"] == "efficientnet_lite0" and run_config["image_size"] == 32
    metrics = runs.read_json(tmp_path / "run", runs.METRICS_FILE)
    assert metrics["accuracy"] == result.metrics["accuracy"] and set(metrics["cv"]["mean"]) >= {"accuracy", "roc_auc"}
    history = runs.read_json(tmp_path / "run", runs.HISTORY_FILE)
    assert set(history["head"]) >= {"loss", "val_loss", "accuracy", "val_accuracy"}
    oof_file = runs.read_table(tmp_path / "run", runs.CV_PREDICTIONS_FILE)
    np.testing.assert_allclose(oof_file["p_without_mask"], oof)
    crops = np.stack([load_crop(p, 32) for p in read_manifest(faces)["crop_file"].iloc[result.val_index]]).astype("float32")
    assert run_config["class_names"] == ["with_mask", "without_mask"] and model.output_shape[-1] == 2  # TINY: binary
    np.testing.assert_allclose(model.predict(crops, verbose=0)[:, 1], result.val_probabilities, atol=1e-4)
    assert 0 < study.end_to_end_crops <= train.END_TO_END_CROPS and study.end_to_end_gap < train.END_TO_END_TOLERANCE


def test_cli_train_runs_the_same_study_as_the_notebook(faces, tmp_path, monkeypatch, capsys):
    """`python -m maskclf train` and 02_train (`run_study` with params.yaml's steps) write the same run folder."""
    from maskclf import config as config_module
    from maskclf.cli import main

    params = config_module.read_sections()
    params["train"] = {**params["train"], **TINY, "compare": [{"epochs": 2}]}
    changed = tmp_path / "params.yaml"
    changed.write_text(yaml.safe_dump(params))
    monkeypatch.setattr(config_module, "PARAMS_FILE", changed)
    study_params = config_module.stage_defaults("02_train")
    study = train.run_study(trainconfig.TrainConfig.from_params({}), faces, tmp_path, "notebook",
                            study_params["cross_validate"], study_params["compare"])
    assert main(["train", "--faces", str(faces), "--out", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "end-to-end model vs cached pipeline" in out and "efficientnet_lite0-imagenet" in out
    files = {name: sorted(p.name for p in (tmp_path / name).iterdir()) for name in ("notebook", "cli")}
    assert files["cli"] == files["notebook"] == sorted(
        [runs.MODEL_FILE, runs.CONFIG_FILE, runs.HISTORY_FILE, runs.METRICS_FILE, runs.CV_PREDICTIONS_FILE,
         runs.COMPARISON_FILE])
    for run in ("notebook", "cli"):
        assert len(runs.read_table(tmp_path / run, runs.COMPARISON_FILE)) == 2  # the run's configuration and one variant
    assert runs.read_json(tmp_path / "cli", runs.METRICS_FILE) == runs.read_json(tmp_path / "notebook", runs.METRICS_FILE)
    assert study.comparison.index.tolist() == runs.read_table(tmp_path / "cli", runs.COMPARISON_FILE).index.tolist()


@pytest.mark.parametrize("head", ["adam", "lbfgs"])
def test_cross_validation_is_cached_by_what_it_depends_on(faces, cache, monkeypatch, head):
    manifest = read_manifest(faces)
    fs = _fs(faces, cache, head=head)
    first, kept = crossval.cached_cross_validate(fs, manifest, keep_fold=0, cache_dir=cache)

    def summaries() -> list:
        return [p for p in (cache / "cv").glob("*.json") if "-fold" not in p.name]

    assert kept is not None and len(summaries()) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("a warm rerun must train nothing")

    monkeypatch.setattr(crossval, "cross_validate_together", no_training)
    monkeypatch.setattr(crossval, "train_folds_together", no_training)
    again, kept_again = crossval.cached_cross_validate(fs, manifest, keep_fold=0, cache_dir=cache)
    assert again == json.loads(json.dumps(first))
    np.testing.assert_array_equal(kept_again.val_probabilities, kept.val_probabilities)
    assert kept_again.history == json.loads(json.dumps(kept.history)) and kept_again.metrics == kept.metrics
    crops = np.stack([load_crop(p, 32) for p in manifest["crop_file"].iloc[kept.val_index]]).astype("float32")
    np.testing.assert_array_equal(kept_again.model.predict(crops, verbose=0), kept.model.predict(crops, verbose=0))
    monkeypatch.undo()
    changed = _fs(faces, cache, head=head, dropout=0.3, head_c=0.5)  # a head parameter: same features, another result
    crossval.cached_cross_validate(changed, manifest, cache_dir=cache)
    refolded = manifest.assign(fold=(manifest["fold"] + 1) % 5)
    crossval.cached_cross_validate(fs, refolded, cache_dir=cache)
    assert len(summaries()) == 3


def test_class_weights_balance_the_classes():
    w = class_weights([0, 0, 0, 1])
    assert w[0] * 3 == pytest.approx(w[1] * 1) and w[0] == pytest.approx(4 / 6)
    w3 = class_weights([0, 0, 1, 2, 2, 2], n_classes=3)
    assert w3[0] * 2 == pytest.approx(w3[1]) == pytest.approx(w3[2] * 3)


def test_views_and_backbones_are_cached_separately(faces, cache):
    single = _fs(faces, cache, pooling="stages")
    assert not single.cache_hit and len(list(cache.glob("*.npz"))) == 1
    flipped = _fs(faces, cache, pooling="stages", augment_views=1)
    assert not flipped.cache_hit and len(list(cache.glob("*.npz"))) == 2, "only the flip view is new"
    np.testing.assert_array_equal(flipped.pooled[0], single.pooled[0])
    both = _fs(faces, cache, backbone="efficientnet_lite0+efficientnet_lite1", pooling="stages")
    assert len(list(cache.glob("*.npz"))) == 3, "only efficientnet_lite1 is new"
    np.testing.assert_array_equal(both.pooled[0, :, : single.pooled.shape[-1]], single.pooled[0])


def test_a_variant_with_the_first_views_of_the_run_is_cut_from_its_features_and_equals_them_read_again(
        faces, cache, monkeypatch):
    base = _fs(faces, cache, pooling="stages", augment_views=2, head="lbfgs")
    fewer = trainconfig.TrainConfig.from_params({**TINY, "pooling": "stages", "augment_views": 1, "head": "adam"})
    derived = featureset.derived_features(base, fewer)
    assert derived.views == ["none", "flip"] and derived.config == fewer
    assert np.shares_memory(derived.pooled, base.pooled), "a slice, not a copy"
    read = featureset.prepare_features(read_manifest(faces), faces, fewer, cache_dir=cache, verbose=0)
    np.testing.assert_array_equal(derived.pooled, read.pooled)
    for other in ({"pooling": "bands"}, {"augment_views": 3}, {"train_seed": 7}, {"fine_tune_blocks": 1, "pooling": "avg"}):
        config = trainconfig.TrainConfig.from_params({**TINY, "pooling": "stages", **other})
        assert featureset.derived_features(base, config) is None, other

    def no_read(*args, **kwargs):
        raise AssertionError("a derivable variant must not read the feature caches again")

    monkeypatch.setattr(train, "prepare_features", no_read)
    [variant] = train.comparison_variants(faces, base.config, [{"label": "one flip", "augment_views": 1}], cache, base)
    assert variant.label == "one flip" and variant.cv is None and variant.fs.views == ["none", "flip"]
    assert np.shares_memory(variant.fs.pooled, base.pooled) and len(variant.faces) == base.pooled.shape[1]


def test_a_comparison_row_whose_cross_validation_is_cached_reads_no_features(faces, cache, monkeypatch):
    manifest = read_manifest(faces)
    base = _fs(faces, cache)
    other = {"label": "lite1", "backbone": "efficientnet_lite1", "image_size": 32}
    [fresh] = train.comparison_variants(faces, base.config, [other], cache, base)
    assert fresh.cv is None and fresh.fs.config.backbone == "efficientnet_lite1", "not derivable: its own features"
    [(summary, _)] = crossval.cached_cross_validate_together([(fresh.fs, fresh.faces, None)], cache)

    def no_read(*args, **kwargs):
        raise AssertionError("a variant whose cross-validation is cached must not read its features")

    monkeypatch.setattr(train, "prepare_features", no_read)
    [warm] = train.comparison_variants(faces, base.config, [other], cache, base)
    assert warm.fs is None and warm.cv == summary and warm.faces.equals(fresh.faces)
    assert crossval.cached_summary(fresh.fs.config, base.data_sha256, base.precision, manifest, cache) == summary
    changed = dataclasses.replace(fresh.fs.config, head_c=fresh.fs.config.head_c * 2)
    assert crossval.cached_summary(changed, base.data_sha256, base.precision, manifest, cache) is None


def test_the_comparison_folds_fitted_with_the_run_s_in_the_same_passes_reach_the_optimum_they_reach_alone(
        faces, cache, monkeypatch):
    from maskclf import heads

    manifest = read_manifest(faces)
    base = _fs(faces, cache, pooling="stages", augment_views=1, head="lbfgs", labels="original", incorrect_weight=3.0)
    fewer = featureset.derived_features(base, dataclasses.replace(base.config, augment_views=0, incorrect_weight=1.0))
    alone = [crossval.cross_validate(fs, manifest, 0) for fs in (base, fewer)]
    passes = []
    fit = heads.fit_logistic
    monkeypatch.setattr(heads, "fit_logistic", lambda x, *a, **k: passes.append(x.shape) or fit(x, *a, **k))
    together = crossval.cross_validate_together([(base, manifest, 0), (fewer, manifest, 0)])
    assert passes == [base.pooled.shape], "one lockstep over the run's array serves both"
    for (summary, kept), (summary_alone, kept_alone) in zip(together, alone):
        np.testing.assert_allclose(summary["oof_probability"], summary_alone["oof_probability"], atol=1e-4)
        assert [f["accuracy"] for f in summary["per_fold"]] == [f["accuracy"] for f in summary_alone["per_fold"]]
        np.testing.assert_allclose(kept.val_probabilities, kept_alone.val_probabilities, atol=1e-4)
    assert not np.allclose(together[0][0]["oof_probability"], together[1][0]["oof_probability"], atol=1e-3), \
        "the two configurations are fitted as themselves"


def test_stage_pooling_reads_every_residual_stage():
    base = backbones.get_backbone("efficientnet_lite0").build(None, 64)
    assert network.stage_outputs(base) == ["block2b_add", "block3b_add", "block4c_add", "block5c_add", "block6d_add",
                                           "top_activation"]
    fs_dim = 2 * sum(base.get_layer(n).output.shape[-1] for n in network.stage_outputs(base))
    assert fs_dim == 2 * (24 + 40 + 80 + 112 + 192 + 1280)


def test_band_pooling_adds_the_bands_of_every_stage_below_the_top():
    spec = backbones.get_backbone("efficientnet_lite0")
    base = spec.build(None, 64)
    inputs = keras.Input((64, 64, 3))
    features = network.pooled_features(spec.name, base, spec.preprocess("preprocess"), inputs, "bands", first=True)
    below_top = 24 + 40 + 80 + 112 + 192
    assert features.shape[-1] == 2 * (below_top + 1280) + network.BANDS * 2 * below_top


def test_training_on_the_original_classes_merges_them_at_the_output(faces):
    manifest = read_manifest(faces)
    labels = training_labels(manifest, "original")
    assert labels.names == ["with_mask", "mask_weared_incorrect", "without_mask"]
    np.testing.assert_array_equal(labels.merge, [[1, 0], [0, 1], [0, 1]])
    np.testing.assert_array_equal(labels.merge[labels.values].argmax(axis=1), encode_labels(manifest["label"]))
    clash = manifest.assign(original_label="with_mask")
    with pytest.raises(DataError, match="more than one class"):
        training_labels(clash, "original")


@pytest.mark.parametrize("bad, match", [
    (dict(backbone="efficientnet_lite0+efficientnet_lite1", fine_tune_blocks=1), "single backbone"),
    (dict(pooling="stages", fine_tune_blocks=1), "pooling='avg'"),
    (dict(head="sgd"), "parameter 'head': 'sgd' is not one of the choices"),
    (dict(backbone="efficientnet_lite0+efficientnet_lite1", weights=__file__), "weights file needs a single"),
])
def test_invalid_configurations(bad, match):
    with pytest.raises(ValueError, match=match):
        trainconfig.TrainConfig.from_params(bad)


def test_config_from_notebook_parameters():
    params = {**STUDY_HEAD, "backbone": "efficientnet_lite0+efficientnet_lite2", "head": "lbfgs", "np": np}
    config = trainconfig.TrainConfig.from_params(params)  # other notebook globals (np) are ignored
    assert config.backbones == ["efficientnet_lite0", "efficientnet_lite2"] and config.image_size == 260
    assert trainconfig.config_label(config) == "efficientnet_lite0+efficientnet_lite2-imagenet-lbfgs"


def test_split_at_block_composes_to_the_whole_backbone():
    keras.utils.set_random_seed(0)
    base = backbones.get_backbone("resnet50").build(None, 64)
    assert network.block_names(base)[-3:] == ["conv5_block1", "conv5_block2", "conv5_block3"]
    lower, upper, first = network.split_at_block(base, 3)
    assert first == "conv5_block1"
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(upper.predict(lower.predict(x, verbose=0), verbose=0), base.predict(x, verbose=0), atol=1e-4)
    with pytest.raises(ValueError, match="blocks"):
        network.split_at_block(base, 99)


@pytest.mark.parametrize("name", ["resnet50", "efficientnet_lite0"])
def test_a_backbone_built_again_later_in_the_process_has_the_same_architecture(name):
    """No name Keras makes up from a process-wide counter (input_layer_7) reaches the model: a warm run builds fewer
    layers before it than a cold one, and the end-to-end check's cache is keyed by the architecture's JSON."""
    first = backbones.get_backbone(name).build(None, 32).to_json()
    keras.Input((3,))  # what other work in the process does to Keras' name counters
    keras.layers.Dense(1)
    assert backbones.get_backbone(name).build(None, 32).to_json() == first


def test_resnet50_caffe_preprocessing_inside_the_model_does_not_touch_the_input():
    keras.utils.set_random_seed(0)
    model = build_backbone("resnet50", None, 32)
    x = np.full((1, 32, 32, 3), 200.0, dtype="float32")
    before = x.copy()
    model.predict(x, verbose=0)
    np.testing.assert_array_equal(x, before)
    pre = model.get_layer("preprocess")(x)
    expected = keras.applications.resnet50.preprocess_input(x.copy())
    np.testing.assert_allclose(np.asarray(pre), expected, atol=1e-4)


def test_weights_file_path(tmp_path):
    keras.utils.set_random_seed(1)
    source = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "resnet50_notop.weights.h5"
    source.save_weights(path)
    loaded = backbones.get_backbone("resnet50").build(str(path), 32)
    for a, b in zip(source.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert backbones.weights_id(str(path)).startswith("file-")
    with pytest.raises(BackboneWeightsError, match="not found"):
        backbones.get_backbone("resnet50").build(str(tmp_path / "missing.h5"), 32)


def test_offline_imagenet_download_fails_with_a_way_out(tmp_path, monkeypatch):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3] no network")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(BackboneWeightsError) as info:
        build_backbone("mobilenet_v2", "imagenet")
    text = str(info.value)
    weights_file = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    assert str(tmp_path / "keras" / "models" / weights_file) in text and "efficientnet_lite0" in text


def test_unknown_backbone():
    with pytest.raises(ValueError, match="unknown backbone 'vgg'"):
        trainconfig.TrainConfig.from_params({"backbone": "vgg"})


def test_run_name():
    config = trainconfig.TrainConfig.from_params({**TINY, "image_size": None, "fine_tune_blocks": 2, "augment_views": 1, "val_fold": 3})
    name = trainconfig.default_run_name(config, "d" * 64)
    assert name == f"efficientnet_lite0-imagenet-ft2-aug1-fold3-{trainconfig.run_id(config, 'd' * 64)}"
    assert re.fullmatch(r"[0-9a-f]{8}", name.rsplit("-", 1)[1])


TRAIN_FIELDS = [f.name for f in dataclasses.fields(trainconfig.TrainConfig)]


def test_the_l_bfgs_memory_enters_the_run_id_of_an_lbfgs_run_only(monkeypatch):
    from maskclf import logreg

    lbfgs = trainconfig.TrainConfig.from_params({**TINY, "head": "lbfgs"})
    adam = trainconfig.TrainConfig.from_params(TINY)
    before = trainconfig.run_id(lbfgs, "d" * 64), trainconfig.run_id(adam, "d" * 64)
    monkeypatch.setattr(logreg, "MEMORY", logreg.MEMORY + 1)
    assert trainconfig.run_id(lbfgs, "d" * 64) != before[0], "a run fitted with another memory has its own folder"
    assert trainconfig.run_id(adam, "d" * 64) == before[1]


@pytest.mark.parametrize("field", TRAIN_FIELDS)
def test_every_training_parameter_gets_its_own_run_folder(field):
    """Changing any one parameter of a run, or the data, changes its folder's name: no experiment can write
    into the folder of another."""
    base = trainconfig.TrainConfig.from_params(TINY)
    changed = {
        "backbone": "efficientnet_lite1", "weights": "none", "image_size": 48, "class_weight": not base.class_weight,
        "pooling": "bands" if base.pooling != "bands" else "avg", "head": "lbfgs" if base.head != "lbfgs" else "adam",
        "labels": "binary" if base.labels != "binary" else "original",
    }.get(field)
    if changed is None:
        value = getattr(base, field)
        changed = value + 1 if isinstance(value, int) else value * 2 + 0.001
    other = dataclasses.replace(base, **{field: changed})
    assert trainconfig.default_run_name(other, "d" * 64) != trainconfig.default_run_name(base, "d" * 64)
    assert trainconfig.default_run_name(base, "e" * 64) != trainconfig.default_run_name(base, "d" * 64)


def test_a_new_option_at_its_neutral_value_keeps_the_cross_validation_cache_and_another_value_does_not(
        faces, cache, monkeypatch):
    """At its neutral value an option is left out of the key, so caches made before it existed stay valid."""
    manifest = read_manifest(faces)
    fs = _fs(faces, cache)
    assert set(crossval.NEUTRAL) <= {f.name for f in dataclasses.fields(trainconfig.TrainConfig)}
    hashed = []
    monkeypatch.setattr(crossval, "cache_key", lambda **parts: hashed.append(parts["config"]) or str(len(hashed)))
    crossval.cv_key(fs.config, fs.data_sha256, fs.precision, manifest)
    assert not set(crossval.NEUTRAL) & set(hashed[-1]), "no option at its neutral value enters the key"
    for name, value in crossval.NEUTRAL.items():
        assert getattr(fs.config, name) == value
        crossval.cv_key(dataclasses.replace(fs.config, **{name: value + 1}), fs.data_sha256, fs.precision, manifest)
        assert hashed[-1][name] == value + 1, f"{name} at another value is part of the key"


def test_a_run_with_the_face_verifier_outputs_p_face_and_records_its_rule(faces, cache, tmp_path, monkeypatch):
    """verifier=1 end to end on the synthetic photos, with a fake candidate finder: every annotated face (score
    0.9) and background boxes touching none (score 0.3), the negatives."""
    from maskclf import candidates, memo
    from maskclf.answers import RULE_KEYS, face_probabilities
    from maskclf.detect import iou_matrix
    from maskclf.framing import manifest_boxes

    manifest = read_manifest(faces)

    def find(path):
        mine = manifest[manifest["source_image"] == path.name]
        truth = np.array(manifest_boxes(mine), float)
        w, h = int(mine["image_width"].iloc[0]), int(mine["image_height"].iloc[0])
        corners = np.array([(0, 0, 12, 12), (w - 12, 0, w, 12), (0, h - 12, 12, h), (w - 12, h - 12, w, h)], float)
        background = corners[~(iou_matrix(corners, truth) > 0).any(axis=1)]
        boxes = np.concatenate([truth, background]).astype(int)
        return [tuple(b) for b in boxes], np.r_[np.full(len(truth), 0.9), np.full(len(background), 0.3)].astype(np.float32)

    find.__qualname__ = "test_train.find"
    real = candidates.photo_candidates
    monkeypatch.setattr(candidates, "photo_candidates", lambda m, p: real(m, p, find))
    monkeypatch.setattr(memo, "FEATURES_DIR", cache)
    config = trainconfig.TrainConfig.from_params({**TINY, "verifier": 1})
    study = train.run_study(config, faces, tmp_path, "verified", cross_validate=False, cache_dir=cache)
    model, run_config = load_run(study.run_dir)
    record = run_config["face_verifier"]
    assert run_config["verifier"] == 1 and set(record["rule"]) == set(RULE_KEYS)
    assert all(np.isfinite(v) for v in record["rule"].values()) and 0 < record["candidate_score"] < 1
    assert model.output_shape[-1] == len(run_config["class_names"]) + 1, "the classes, then P(face)"
    crops = np.stack([load_crop(p, 32) for p in manifest["crop_file"].iloc[:8]]).astype("float32")
    p_face = face_probabilities(model.predict(crops, verbose=0), run_config)
    assert p_face.shape == (8,) and ((p_face >= 0) & (p_face <= 1)).all()
    plain = trainconfig.TrainConfig.from_params(TINY)
    assert trainconfig.run_id(plain, study.fs.data_sha256) != run_config["run_id"], "a verifier run has its own folder"
    assert "face_verifier" not in runs.read_config(train.run_study(plain, faces, tmp_path, "plain", cross_validate=False,
                                                                   cache_dir=cache).run_dir)
    from maskclf import logreg

    def verifiers() -> list:
        return sorted((cache / "results").glob("verifier-*"))

    assert len(verifiers()) == 1
    monkeypatch.setattr(logreg, "MEMORY", logreg.MEMORY + 1)
    candidates.train_verifier(study.fs, manifest, faces, config.val_fold, cache)
    assert len(verifiers()) == 2, "a verifier fitted with another L-BFGS memory is never read from the cache"
