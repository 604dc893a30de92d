"""The backbone pass in bfloat16 (OpenVINO): close to float32, deterministic, in caches and run folders of its own,
and checked against the float32 saved model."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from maskclf import fastpass, train, trainconfig
from maskclf.data import read_manifest
from maskclf.featureset import prepare_features

from test_train import TINY


def small_convnet() -> keras.Model:
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 127.5, -1)(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = keras.layers.Conv2D(32, 3, activation="relu")(x)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))


def batches(n: int = 40) -> tf.data.Dataset:
    images = np.random.default_rng(0).uniform(0, 255, (n, 32, 32, 3)).astype("float32")
    return tf.data.Dataset.from_tensor_slices(images).batch(16)


def test_the_bfloat16_pass_is_close_to_float32_in_order_and_deterministic():
    keras.utils.set_random_seed(0)
    model = small_convnet()
    exact = fastpass.run_pass(model, batches(), "float32")
    fast = fastpass.run_pass(model, batches(), "bfloat16")
    assert fast.shape == exact.shape == (40, 32) and fast.dtype == np.float32
    np.testing.assert_allclose(fast, exact, rtol=0.05, atol=0.02 * np.abs(exact).max())  # bfloat16: 8 bits of mantissa
    assert not (fast.view(np.uint32) & 0xFFFF).any(), "the pooling runs in bfloat16 to the end: its outputs are bfloat16"
    np.testing.assert_array_equal(fastpass.run_pass(model, batches(), "bfloat16"), fast)
    assert fastpass.run_pass(model, batches(0), "bfloat16").shape == (0, 32)
    with pytest.raises(ValueError, match="float16"):
        fastpass.run_pass(model, batches(), "float16")


def test_a_pass_fills_the_array_it_is_given():
    keras.utils.set_random_seed(0)
    model = small_convnet()
    for precision in ("float32", "bfloat16"):
        expected = fastpass.run_pass(model, batches(), precision)
        out = np.full((2, 40, 32), np.nan, np.float32)
        assert np.shares_memory(fastpass.run_pass(model, batches(), precision, out=out[1]), out), "filled in place"
        np.testing.assert_array_equal(out[1], expected)
        assert np.isnan(out[0]).all(), "only its own rows"
    with pytest.raises(ValueError, match="gave 40 outputs for an array of 41"):
        fastpass.run_pass(model, batches(), "bfloat16", out=np.empty((41, 32), np.float32))


def test_the_bfloat16_pass_infers_in_small_batches_with_the_same_outputs(monkeypatch):
    keras.utils.set_random_seed(0)
    model = small_convnet()
    whole = fastpass.run_pass(model, batches(), "bfloat16")  # batches of 16, inferred whole
    infer, sizes = fastpass._compiled(model, "bfloat16"), []
    monkeypatch.setattr(fastpass, "_compiled", lambda m, p: lambda part: sizes.append(len(part)) or infer(part))
    monkeypatch.setattr(fastpass, "OPENVINO_BATCH", 6)
    np.testing.assert_array_equal(fastpass.run_pass(model, batches(), "bfloat16"), whole)
    assert sizes == [6, 6, 4, 6, 6, 4, 6, 2], "each batch of 16 (and the last of 8) in inferences of at most 6"


def test_the_precision_follows_the_environment_and_the_cpu(precision, monkeypatch, capsys):
    import openvino

    assert precision("float32") == "float32"
    native = "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert precision(None) == ("bfloat16" if native else "float32")
    with pytest.raises(ValueError, match="MASKCLF_PRECISION='half'"):
        precision("half")

    class NoBfloat16:
        def get_property(self, device, name):
            return ["FP32", "INT8"]

    monkeypatch.setattr(openvino, "Core", NoBfloat16)
    capsys.readouterr()
    assert precision("bfloat16") == "float32"
    assert fastpass.feature_precision() == "float32"
    assert capsys.readouterr().err.count("neither AMX nor AVX512-BF16") == 1, "said once"


def test_each_precision_has_its_own_run_id_and_float32_keeps_the_former_one(monkeypatch):
    monkeypatch.setattr(fastpass, "bfloat16_isa", lambda: "amx")
    config = trainconfig.TrainConfig.from_params(TINY)
    sha = "d" * 64
    assert trainconfig.run_id(config, sha, "float32") == trainconfig.run_id(config, sha)
    assert trainconfig.run_id(config, sha, "bfloat16") != trainconfig.run_id(config, sha)
    assert fastpass.precision_key("float32") == {}
    assert fastpass.precision_key("bfloat16") == {"precision": "bfloat16", "pass": fastpass.BFLOAT16_PASS}


def test_a_bfloat16_pass_without_amx_has_its_own_keys_run_id_and_result_caches(monkeypatch):
    from maskclf import memo
    from maskclf.model import CompiledModel

    config = trainconfig.TrainConfig.from_params(TINY)
    sha = "d" * 64
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    monkeypatch.setattr(fastpass, "bfloat16_isa", lambda: "amx")
    with_amx = (trainconfig.run_id(config, sha, "bfloat16"), memo.model_fingerprint(CompiledModel(model, "bfloat16")))
    monkeypatch.setattr(fastpass, "bfloat16_isa", lambda: "avx512_bf16")
    assert fastpass.precision_key("bfloat16") == {"precision": "bfloat16", "pass": fastpass.BFLOAT16_PASS,
                                                  "isa": "avx512_bf16"}
    assert fastpass.precision_key("float32") == {}
    assert trainconfig.run_id(config, sha, "bfloat16") != with_amx[0]
    assert memo.model_fingerprint(CompiledModel(model, "bfloat16")) != with_amx[1]
    assert trainconfig.run_id(config, sha, "float32") == trainconfig.run_id(config, sha)


def test_the_bfloat16_instructions_are_read_from_the_cpu_flags(tmp_path):
    amx, avx = tmp_path / "amx", tmp_path / "avx"
    amx.write_text("flags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n")
    avx.write_text("flags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n")
    assert fastpass.bfloat16_isa(str(amx)) == "amx"
    assert fastpass.bfloat16_isa(str(avx)) == "avx512_bf16"
    assert fastpass.bfloat16_isa(str(tmp_path / "missing")) == "unknown"


def test_the_end_to_end_check_is_strict_for_float32_and_bounded_for_bfloat16():
    cached = np.array([0.1, 0.45, 0.55, 0.9] * 50)
    assert train.check_end_to_end(cached + 5e-5, cached, "float32", "P") == pytest.approx((5e-5, 1.0))
    with pytest.raises(RuntimeError, match="float32|preprocessing"):
        train.check_end_to_end(cached + 0.01, cached, "float32", "P")
    gap, agreement = train.check_end_to_end(cached + 0.01, cached, "bfloat16", "P")
    assert gap == pytest.approx(0.01) and agreement == 1.0
    one_flip = cached.copy()
    one_flip[1] = 0.52  # 1 of 200 labels differs: within BFLOAT16_AGREEMENT
    assert train.check_end_to_end(one_flip, cached, "bfloat16", "P")[1] == pytest.approx(0.995)
    with pytest.raises(RuntimeError, match="bfloat16 cached pipeline"):
        train.check_end_to_end(cached[::-1].copy(), cached, "bfloat16", "P(face)")


def test_a_bfloat16_study_has_its_own_caches_and_folder_and_passes_the_check(extracted_faces, tmp_path, precision):
    faces, cache = extracted_faces, tmp_path / "cache"
    config = trainconfig.TrainConfig.from_params(TINY)
    precision("float32")
    exact = train.run_study(config, faces, tmp_path / "models", cross_validate=False, cache_dir=cache)
    if precision("bfloat16") != "bfloat16":
        pytest.skip("this CPU has no native bfloat16: the pass falls back to float32")
    fast = train.run_study(config, faces, tmp_path / "models", cross_validate=False, cache_dir=cache)
    assert fast.fs.precision == "bfloat16" and not fast.fs.cache_hit, "bfloat16 features are not float32's cache"
    assert fast.run_dir != exact.run_dir and exact.run_dir.is_dir(), "its own run folder; the float32 one stays"
    assert json.loads((fast.run_dir / "config.json").read_text())["feature_precision"] == "bfloat16"
    assert fast.end_to_end_crops == len(fast.result.val_index), "every held-out crop is checked"
    assert fast.end_to_end_agreement >= train.BFLOAT16_AGREEMENT and fast.end_to_end_gap < train.BFLOAT16_TOLERANCE
    assert fast.fs.pooled is None and "cached array" in fast.features, "the study frees its arrays, keeps their summary"
    fast_pooled = prepare_features(read_manifest(faces), faces, config, cache, verbose=0).pooled  # cache hits
    precision("float32")
    exact_pooled = prepare_features(read_manifest(faces), faces, config, cache, verbose=0).pooled
    assert not np.array_equal(fast_pooled, exact_pooled)
    assert np.abs(fast_pooled - exact_pooled).mean() < 0.01 * np.abs(exact_pooled).max(), "close on the whole"
    assert len(read_manifest(faces)) == fast_pooled.shape[1]


def test_converting_a_model_for_openvino_sends_nothing_and_forks_no_process(monkeypatch):
    """OpenVINO's converter, with its telemetry package installed, forks the process (its whole memory) to send
    usage events on every conversion; maskclf installs OpenVINO without it (requirements-nodeps.txt)."""
    import os
    import time

    for ci in ("CI", "TF_BUILD", "JENKINS_URL"):  # telemetry stays silent in CI; the test must not depend on it
        monkeypatch.delenv(ci, raising=False)
    forks = []

    def no_fork() -> int:
        forks.append(1)
        raise OSError("no process may be forked here")

    monkeypatch.setattr(os, "fork", no_fork)
    fastpass.openvino_graph(small_convnet())
    time.sleep(1.0)  # the telemetry sends from a thread pool
    assert forks == []


def test_the_views_of_one_model_share_one_conversion(monkeypatch):
    model, calls = small_convnet(), []
    convert = fastpass.openvino_graph
    monkeypatch.setattr(fastpass, "openvino_graph", lambda m: calls.append(m) or convert(m))
    faces = tf.data.Dataset.from_tensor_slices(np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3))
                                               .astype("float32")).batch(4)
    first = fastpass.run_pass(model, faces, "bfloat16")
    again = fastpass.run_pass(model, faces.map(lambda x: 255 - x), "bfloat16")
    assert len(calls) == 1 and first.shape == again.shape == (8, 32) and not np.allclose(first, again)
    fastpass.run_pass(small_convnet(), faces, "bfloat16")
    assert len(calls) == 2, "another model is converted on its own"


def test_the_feature_cache_shares_one_compiled_pass_and_then_releases_it(tmp_path, monkeypatch):
    from maskclf.features import cached_outputs

    model, calls = small_convnet(), []
    convert = fastpass.openvino_graph
    monkeypatch.setattr(fastpass, "openvino_graph", lambda m: calls.append(m) or convert(m))
    faces = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    load = {view: faces.__getitem__ for view in ("first", "second")}
    outputs, hit = cached_outputs(model, ["a.png", "b.png", "c.png"], 32, {"backbone": "tiny"}, tmp_path, batch_size=2,
                                  views=list(load), verbose=0, loaders=load, precision="bfloat16")
    assert outputs.shape == (2, 3, 32) and not hit and len(calls) == 1, "the two views share one conversion"
    assert model not in fastpass._COMPILED, "released once the views are computed: its memory is freed now"


def test_a_bfloat16_pass_holds_its_features_in_bfloat16_and_caches_them_in_float32(tmp_path):
    """Half the memory in the study, the same numbers: the cache file holds the held values exactly, in float32, and
    serves a float32 or a bfloat16 reader alike."""
    from ml_dtypes import bfloat16

    from maskclf.features import cached_outputs

    assert fastpass.feature_dtype("bfloat16") == bfloat16 and fastpass.feature_dtype("float32") == np.float32
    faces = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    args = (small_convnet(), ["a.png", "b.png", "c.png"], 32, {"backbone": "tiny"}, tmp_path)
    kwargs = {"batch_size": 2, "views": ["first"], "verbose": 0, "loaders": {"first": faces.__getitem__},
              "precision": "bfloat16"}
    held, hit = cached_outputs(*args, dtype=bfloat16, **kwargs)
    assert held.dtype == bfloat16 and held.shape == (1, 3, 32) and not hit
    [cache_file] = tmp_path.glob("*.npz")
    with np.load(cache_file) as stored:
        cached = stored["outputs"]
    assert cached.dtype == np.float32 and cached.any()
    np.testing.assert_array_equal(held[0].astype(np.float32), cached)
    as_float32, hit = cached_outputs(*args, **kwargs)
    assert hit and as_float32.dtype == np.float32
    np.testing.assert_array_equal(as_float32[0], cached)
    again, hit = cached_outputs(*args, dtype=bfloat16, **kwargs)
    assert hit and again.dtype == bfloat16
    np.testing.assert_array_equal(again, held)


def test_the_evaluation_scores_a_bfloat16_run_as_its_export_does_and_caches_it_apart(precision, monkeypatch):
    from maskclf import memo
    from maskclf.model import as_deployed

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(small_convnet()(inputs)))
    crops = np.random.default_rng(1).uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    assert as_deployed(model, {"feature_precision": "float32"}) is model
    if precision(None) != "bfloat16":
        assert as_deployed(model, {"feature_precision": "bfloat16"}) is model, "no bfloat16 on this CPU"
        return
    compiled, real = [], fastpass.compile_openvino
    monkeypatch.setattr(fastpass, "compile_openvino", lambda m, p: compiled.append(p) or real(m, p))
    deployed = as_deployed(model, {"feature_precision": "bfloat16"})
    assert compiled == [], "compiled at its first batch, not before: a cached rerun compiles nothing"
    assert deployed.output_shape == model.output_shape
    assert memo.model_fingerprint(deployed) != memo.model_fingerprint(model)
    assert memo.model_fingerprint(deployed) == memo.model_fingerprint(as_deployed(model, {"feature_precision": "bfloat16"}))
    fast = deployed.predict_on_batch(crops)
    np.testing.assert_array_equal(deployed.predict_on_batch(crops), fast)
    assert compiled == ["bfloat16"], "compiled once"
    np.testing.assert_allclose(fast, model.predict_on_batch(crops), atol=0.02)
    assert fast.dtype == np.float32 and fast.shape == (6, 2)


def test_known_rows_are_read_from_their_cache_file_and_only_the_others_are_computed(tmp_path):
    """A view whose faces another cache file already holds (the verifier's candidates that are detector-view crops)
    reads those rows there, loads none of those faces, and writes a cache file like any other; a file that no longer
    holds the crops it is said to hold is not read."""
    from maskclf.features import KnownRows, cached_outputs, view_cache_files

    faces = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    model = small_convnet()
    first = {"batch_size": 2, "views": ["faces"], "verbose": 0, "loaders": {"faces": faces.__getitem__}}
    names = [f"face{i}.png" for i in range(6)]
    held, _ = cached_outputs(model, names, 32, {"backbone": "tiny"}, tmp_path, **first)
    [held_file] = view_cache_files(names, 32, {"backbone": "tiny"}, tmp_path, views=["faces"],
                                   loaders=first["loaders"])
    assert held_file.is_file(), "view_cache_files names the file cached_outputs wrote"

    order = [5, 2, 0, 3]  # the second view's faces, as rows of the first; its rows 1 and 3 are known
    loaded: list[int] = []

    def load(i: int) -> np.ndarray:
        loaded.append(i)
        return faces[order[i]]

    def second(known: KnownRows, folder) -> np.ndarray:
        loaded.clear()
        out, hit = cached_outputs(model, ["a", "b", "c", "d"], 32, {"backbone": "tiny"}, folder, batch_size=2,
                                  views=["candidates"], verbose=0, loaders={"candidates": load},
                                  known={"candidates": known})
        assert not hit
        return out[0]

    known = KnownRows(np.array([1, 3]), held_file, np.array([2, 3]), names)
    out = second(known, tmp_path / "second")
    assert sorted(loaded) == [0, 2], "the known faces are never loaded"
    np.testing.assert_array_equal(out[[1, 3]], held[0, [2, 3]])
    np.testing.assert_allclose(out[[0, 2]], held[0, [5, 0]], rtol=1e-5, atol=1e-6)
    [written] = (tmp_path / "second").glob("*.npz")
    with np.load(written) as stored:
        np.testing.assert_array_equal(stored["outputs"], out)

    stale = KnownRows(np.array([1, 3]), held_file, np.array([2, 3]), [f"other{i}.png" for i in range(6)])
    second(stale, tmp_path / "third")
    assert sorted(loaded) == [0, 1, 2, 3], "a file of other crops is not read: every row is computed"


def test_only_a_batch_invariant_pass_lends_its_views_cache_files(extracted_faces, tmp_path, precision):
    """The bfloat16 pass gives a face the same numbers in any batch, so a later pass over the same crops may read
    them from the views' files (FeatureSet.view_files); the float32 Keras pass lends none, nor a cache that holds more
    than the model's features (a pooling cut from the band-pooled superset)."""
    config = trainconfig.TrainConfig.from_params({**TINY, "pooling": "bands", "augment_views": 1})
    manifest = read_manifest(extracted_faces)
    precision("float32")
    assert prepare_features(manifest, extracted_faces, config, tmp_path, verbose=0).view_files is None
    if precision("bfloat16") != "bfloat16":
        pytest.skip("this CPU has no native bfloat16: the pass falls back to float32")
    superset = trainconfig.TrainConfig.from_params({**TINY, "pooling": "avg"})
    assert prepare_features(manifest, extracted_faces, superset, tmp_path, verbose=0).view_files is None
    fs = prepare_features(manifest, extracted_faces, config, tmp_path, verbose=0)
    assert fastpass.batch_invariant("bfloat16") and not fastpass.batch_invariant("float32")
    assert len(fs.view_files) == len(fs.views) and all(f.is_file() for f in fs.view_files)
    with np.load(fs.view_files[-1]) as stored:
        np.testing.assert_array_equal(stored["outputs"], fs.pooled[-1].astype(np.float32))


def test_the_passes_and_the_heads_pipelines_run_without_tf_data_autotuning(tmp_path):
    """tf.data's autotuner kept a finished iterator waiting, the CPU idle, for about a third of a view's time: the
    backbone's loaders, the crops scored by a model and the Adam head's batches are built with it off, and a pipeline
    without it still gives every face, in order."""
    from maskclf import features, heads

    faces = [np.full((4, 4, 3), i, np.uint8) for i in range(5)]
    ds = features.face_dataset(lambda i: faces[i], len(faces), 4, batch_size=2)
    assert ds.options().autotune.enabled is False
    assert [int(b[j, 0, 0, 0]) for b in ds.as_numpy_iterator() for j in range(len(b))] == list(range(5))
    assert features.crop_dataset([str(tmp_path / "c.png")], 4).options().autotune.enabled is False
    x, y = np.zeros((6, 3), np.float32), np.arange(6) % 2
    assert heads._dataset(x, y, 4, seed=0, shuffle=True).options().autotune.enabled is False
