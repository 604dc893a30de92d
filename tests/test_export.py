"""export: every format written into the run folder and answering like the Keras model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthetic import draw_face
from tinymodel import solid

from maskclf import export
from maskclf.cli import main
from maskclf.data import DataError, extract_faces, read_manifest
from maskclf.export import (
    FORMATS, MAX_AUC_DIFF, MIN_AGREEMENT, calibration_crops, export_model, export_run, load_check_crops,
    parity, quantize_onnx,
)
from maskclf.runs import EXPORT_FILES, PARITY_FILE, load_run, read_json
from maskclf.runtime import fastest_runtime, load_runner


@pytest.fixture
def run_dir(tiny_run, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


@pytest.fixture(scope="module")
def crops_dir(tmp_path_factory) -> Path:
    """Labelled crops as `extract` lays them out: faces/<label>/*.png, in varied sizes and shades."""
    root = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    for label in ("with_mask", "without_mask"):
        (root / label).mkdir()
        for i in range(30):
            crop = draw_face(int(rng.integers(12, 64)), label).astype(np.int16)
            crop = np.clip(crop + rng.integers(-25, 25, size=3), 0, 255).astype(np.uint8)
            Image.fromarray(crop).save(root / label / f"{label}_{i:02d}.png")
    Image.fromarray(solid((0, 220, 0))).save(root / "with_mask" / "green.png")
    (root / "without_mask" / "broken.png").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def faces_dir(tmp_path_factory, voc_master) -> Path:
    """An `extract` output of the synthetic data set: crops with a manifest of folds."""
    return extract_faces(voc_master, tmp_path_factory.mktemp("extract") / "faces", progress=False).out_dir


def held_out(run_dir: Path) -> tuple:
    """The tiny model and its config, validated on fold 0 like the study's runs."""
    model, config = load_run(run_dir)
    return model, {**config, "val_fold": 0}


BINARY = {"class_names": ["with_mask", "without_mask"]}
"""A binary model's run config, as parity reads it."""


def test_parity_figures():
    ref = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    same = parity(ref, ref, BINARY, labels=np.array([0, 1, 0, 1]))
    assert same["agreement"] == 1.0 and same["auc_diff"] == 0.0 and same["passed"]
    flipped = ref.copy()
    flipped[2] = [0.4, 0.6]
    worse = parity(ref, flipped, BINARY, labels=np.array([0, 1, 0, 1]))
    assert worse["agreement"] == 0.75 and worse["max_abs_diff"] == pytest.approx(0.2) and not worse["passed"]
    assert "auc_diff" not in parity(ref, ref, BINARY)


def test_load_check_crops_from_folders_and_from_voc(crops_dir, voc_master):
    crops, labels, problems, files = load_check_crops(crops_dir, 32)
    assert crops.shape == (61, 32, 32, 3) and crops.dtype == np.float32
    assert labels.sum() == 30 and len(problems) == 1 and "broken.png" in problems[0]
    assert len(files) == 61 and "broken.png" not in " ".join(files), "each crop's file, the unreadable one left out"
    crops, labels, _, _ = load_check_crops(crops_dir, 32, limit=10)
    assert len(crops) == 10
    crops, labels, problems, files = load_check_crops(voc_master, 32)
    n_faces = sum(xml.read_text().count("<object>") for xml in (voc_master / "annotations").glob("*.xml"))
    assert len(crops) == n_faces and not problems and files is None, "crops cut from photos have no file"
    assert 0 < labels.sum() < len(labels)  # mask_weared_incorrect counts as without_mask, as in extract


def test_export_every_format_with_parity(run_dir, faces_dir):
    model, config = held_out(run_dir)
    report = export_run(run_dir, model, config, FORMATS, faces_dir, limit=None)
    val_crops = load_check_crops(faces_dir, 32, folds=[0])[0]
    assert set(report["formats"]) == set(FORMATS) and report["calibration"]["folds"] == [1, 2, 3, 4]
    for fmt, entry in report["formats"].items():
        p = entry["parity"]
        assert p["n"] == len(val_crops) and entry["ms_per_face"] > 0
        assert entry["usable"] == p["passed"] == (p["agreement"] >= MIN_AGREEMENT and p["auc_diff"] <= MAX_AUC_DIFF)
        assert (run_dir / "export" / EXPORT_FILES[fmt]).is_file() == entry["usable"], fmt
        if fmt != "tflite-int8":  # TFLite's full-integer int8 may miss the target; the others meet it
            assert entry["usable"], (fmt, p)
            assert p["max_abs_diff"] < (0.05 if fmt == "onnx-int8" else 1e-2)
    saved = read_json(run_dir, PARITY_FILE)
    assert saved["formats"].keys() == report["formats"].keys()
    assert [p.name for p in (run_dir / "export").iterdir() if p.name.startswith(".")] == []


def test_onnx_int8_quantises_the_backbone_per_channel_and_keeps_the_head_float(run_dir, faces_dir, tmp_path):
    import onnx

    model, config = held_out(run_dir)
    calibration, _ = calibration_crops(faces_dir, config)
    crops = load_check_crops(faces_dir, 32, folds=[0])[0]
    reference = model.predict_on_batch(crops)  # Keras exports only a model that has been called
    float_path = export_model(model, "onnx", tmp_path / "model.onnx")
    int8_path = quantize_onnx(float_path, tmp_path / "model_int8.onnx", calibration, float_first_conv=False)
    graph = onnx.load(str(int8_path)).graph
    init = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    producer = {out: n for n in graph.node for out in n.output}
    conv = next(n for n in graph.node if n.op_type == "Conv")
    weight_dq = producer[conv.input[1]]
    assert weight_dq.op_type == "DequantizeLinear" and init[weight_dq.input[0]].dtype == np.int8
    assert init[weight_dq.input[1]].shape == (3,)  # one scale per output channel
    assert producer[conv.input[0]].op_type == "DequantizeLinear"  # activations quantised too
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for node in graph.node:  # pooling, standardisation and head run in float: none of their outputs is quantised
        if node.op_type in ("MatMul", "Sub", "Mul", "Softmax", "ReduceMean", "ReduceMax", "GlobalAveragePool"):
            assert all(c.op_type != "QuantizeLinear" for o in node.output for c in consumers.get(o, [])), node
        if node.op_type in ("MatMul", "Sub", "Mul", "Softmax"):  # and no int8 weights or inputs
            assert all(producer.get(i) is None or producer[i].op_type != "DequantizeLinear" for i in node.input), node
    p = parity(reference, load_runner(int8_path)(crops), config)
    assert p["agreement"] >= MIN_AGREEMENT and p["max_abs_diff"] < 0.05, p
    stem_float = quantize_onnx(float_path, tmp_path / "stem_float.onnx", calibration)
    graph = onnx.load(str(stem_float)).graph
    conv = next(n for n in graph.node if n.op_type == "Conv")
    assert all(n.op_type != "DequantizeLinear" for n in graph.node if set(n.output) & set(conv.input))


def test_int8_is_calibrated_on_training_folds_only(run_dir, faces_dir, monkeypatch):
    model, config = held_out(run_dir)
    chosen, passed = [], []
    real_crops, real_quantize = export.calibration_crops, export.quantize_onnx
    monkeypatch.setattr(export, "calibration_crops", lambda *a, **kw: chosen.append(real_crops(*a, **kw)) or chosen[-1])
    monkeypatch.setattr(export, "quantize_onnx", lambda src, dst, cal, **kw: passed.append(cal) or real_quantize(src, dst, cal, **kw))
    report = export_run(run_dir, model, config, ["onnx-int8"], faces_dir, limit=None)
    [(crops, rows)], [calibration] = chosen, passed
    manifest = read_manifest(faces_dir)
    assert calibration is crops and len(rows) == len(crops) == report["calibration"]["crops"]
    assert len(rows) == min(export.CALIBRATION_CROPS, int((manifest["fold"] != 0).sum()))
    assert set(manifest.loc[rows, "fold"]) == {1, 2, 3, 4} and report["calibration"]["folds"] == [1, 2, 3, 4]
    assert report["formats"]["onnx-int8"]["parity"]["n"] == int((manifest["fold"] == 0).sum())
    few, few_rows = real_crops(faces_dir, config, n=5)
    assert len(few) == 5 and 0 not in set(manifest.loc[few_rows, "fold"])
    with pytest.raises(DataError, match="needs an extraction"):
        real_crops(faces_dir.parent, config)


def test_a_format_that_misses_the_target_is_not_kept(run_dir, faces_dir, monkeypatch, capsys):
    model, config = held_out(run_dir)
    export_run(run_dir, model, config, ["onnx"], faces_dir)
    assert fastest_runtime(model, run_dir).path == run_dir / "export" / EXPORT_FILES["onnx"]
    monkeypatch.setattr(export, "MIN_AGREEMENT", 1.01)  # no export can meet it
    assert main(["export", "--model", str(run_dir), "--format", "onnx", "--check", str(faces_dir)]) == 1
    assert "not kept: onnx missed the parity target" in capsys.readouterr().err
    saved = read_json(run_dir, PARITY_FILE)["formats"]["onnx"]
    assert saved["usable"] is False and saved["parity"]["agreement"] == 1.0
    assert not (run_dir / "export" / EXPORT_FILES["onnx"]).exists()
    assert fastest_runtime(model, run_dir) is model  # an earlier, passing export is not left in use


def test_inference_uses_onnx_int8_when_it_passed(run_dir, faces_dir):
    model, config = held_out(run_dir)
    report = export_run(run_dir, model, config, ["onnx", "onnx-int8"], faces_dir)
    assert all(e["usable"] for e in report["formats"].values())
    runtime = fastest_runtime(model, run_dir)
    assert runtime.path == run_dir / "export" / EXPORT_FILES["onnx-int8"]
    crops = load_check_crops(faces_dir, 32, folds=[0])[0]
    p = parity(model.predict_on_batch(crops), runtime.predict_on_batch(crops), config)
    assert p["agreement"] >= MIN_AGREEMENT and p["max_abs_diff"] < 0.05


def test_onnx_and_onnx_int8_share_one_conversion(run_dir, faces_dir, monkeypatch):
    model, config = held_out(run_dir)
    conversions, quantised = [], []
    real_export, real_quantize = model.export, export.quantize_onnx
    monkeypatch.setattr(model, "export", lambda path, format, **kw: conversions.append(format) or real_export(path, format=format, **kw))
    monkeypatch.setattr(export, "quantize_onnx", lambda src, dst, cal, **kw: quantised.append(src) or real_quantize(src, dst, cal, **kw))
    report = export_run(run_dir, model, config, ["onnx", "onnx-int8"], faces_dir)
    assert conversions == ["onnx"] and len(quantised) == 1 and not Path(quantised[0]).exists()  # a temporary file
    assert all(entry["usable"] for entry in report["formats"].values())
    assert load_runner(run_dir / "export" / EXPORT_FILES["onnx"])(np.zeros((1, 32, 32, 3), np.float32)).shape[0] == 1
    assert [p.name for p in (run_dir / "export").iterdir() if p.name.startswith(".")] == []


def test_openvino_is_ir_converted_without_onnx_run_by_openvino_and_used_first(run_dir, faces_dir, monkeypatch):
    import onnxruntime

    model, config = held_out(run_dir)
    conversions = []
    real_export = model.export
    monkeypatch.setattr(model, "export", lambda path, format, **kw: conversions.append(format) or real_export(path, format=format, **kw))
    report = export_run(run_dir, model, config, ["openvino"], faces_dir)
    xml = run_dir / "export" / EXPORT_FILES["openvino"]
    entry = report["formats"]["openvino"]
    assert conversions == [] and entry["usable"] and entry["file"] == str(xml)
    assert entry["bytes"] == xml.stat().st_size + xml.with_suffix(".bin").stat().st_size
    assert sorted(p.name for p in (run_dir / "export").iterdir()) == ["model_openvino.bin", "model_openvino.xml", "parity.json"]
    monkeypatch.setattr(onnxruntime, "InferenceSession", None)  # OpenVINO runs it, not ONNX Runtime
    runtime = fastest_runtime(model, run_dir)
    assert runtime.path == xml
    crops = load_check_crops(faces_dir, 32, folds=[0])[0]
    for n in (1, 7):  # float32 here (tests/conftest.py): the Keras model's outputs
        np.testing.assert_allclose(runtime.predict_on_batch(crops[:n]), model.predict_on_batch(crops[:n]), atol=1e-4)
    monkeypatch.setattr(export, "MIN_AGREEMENT", 1.01)  # no export can meet it: neither file stays
    assert not export_run(run_dir, model, config, ["openvino"], faces_dir)["formats"]["openvino"]["usable"]
    assert sorted(p.name for p in (run_dir / "export").iterdir()) == ["parity.json"]


def test_openvino_falls_back_to_float32_when_bfloat16_misses_the_target(run_dir, faces_dir, monkeypatch, capsys):
    model, config = held_out(run_dir)
    real_parity, seen = export.parity, []

    def parity_missing_in_bfloat16(reference, candidate, *args, **kwargs):
        report = real_parity(reference, candidate, *args, **kwargs)
        seen.append(report)
        return {**report, "passed": False} if len(seen) == 1 else report

    monkeypatch.setattr(export, "openvino_precisions", lambda: ["bfloat16", "float32"])
    monkeypatch.setattr(export, "parity", parity_missing_in_bfloat16)
    assert main(["export", "--model", str(run_dir), "--check", str(faces_dir)]) == 0
    out = capsys.readouterr().out
    entry = read_json(run_dir, PARITY_FILE)["formats"]["openvino"]
    assert entry["usable"] and entry["precision"] == "float32" and set(entry["missed"]) == {"bfloat16"}
    assert "openvino in bfloat16 missed the target" in out and "kept in float32" in out and "(float32)" in out
    assert fastest_runtime(model, run_dir).path == run_dir / "export" / EXPORT_FILES["openvino"]


def test_report_shows_the_faces_kept_agreement_of_a_verifier_model():
    entry = {"bytes": 1e6, "ms_per_face": 2.0, "usable": False,
             "parity": {"agreement": 1.0, "max_abs_diff": 0.1, "face_agreement": 0.984, "passed": False}}
    lines = export.format_report({"formats": {"onnx-int8": entry}, "keras_ms_per_face": 9.0}).splitlines()
    assert "faces agr" in lines[0] and "0.9840" in lines[1] and lines[2].split() == ["keras", *["-"] * 7, "9.0"]
    entry["parity"]["rule_agreement"] = 0.9991
    lines = export.format_report({"formats": {"onnx-int8": entry}, "keras_ms_per_face": 9.0}).splitlines()
    assert "0.9991" in lines[1] and "0.9840" not in lines[1], "the rule's decisions, where measured"
    del entry["parity"]["face_agreement"], entry["parity"]["rule_agreement"]
    assert "faces agr" not in export.format_report({"formats": {"onnx": entry}, "keras_ms_per_face": 9.0})


def test_the_faces_kept_pass_on_the_verifier_s_decisions_where_they_were_measured():
    crops_only = {"agreement": 1.0, "face_agreement": 0.99}
    assert not export.parity_passed(crops_only), "without candidates, P(face)'s side of 0.5 on the crops decides"
    assert export.parity_passed({**crops_only, "rule_agreement": 1.0}), "the rule's decisions decide where measured"
    assert not export.parity_passed({**crops_only, "face_agreement": 1.0, "rule_agreement": 0.99})
    assert export.parity_passed({"agreement": 1.0}) and not export.parity_passed({"agreement": 0.99})


TWO_CANDIDATES = ([(137, 10, 159, 16), (126, 60, 156, 90)], [0.5, 0.3])
"""What the fake candidate finder finds in every photo (boxes, CenterFace scores): the skin of the face at the right
border (all but photo0 have one), and the background."""


@pytest.fixture
def two_candidates(monkeypatch) -> None:
    """CenterFace replaced by TWO_CANDIDATES, cached under a key of its own."""
    from maskclf import detect

    boxes, scores = TWO_CANDIDATES
    monkeypatch.setattr(detect, "make_candidate_finder", lambda *a, **k: lambda image: (boxes, np.float32(scores)))
    monkeypatch.setattr(detect, "candidate_settings", lambda *a, **k: {"finder": "tests: TWO_CANDIDATES"})


def test_a_verifier_run_is_checked_on_the_rule_s_decisions_over_held_out_candidates(faces_dir, tmp_path, two_candidates,
                                                                                  monkeypatch, capsys):
    from test_verifier import make_verifier_run

    from maskclf.answers import face_probabilities, kept_as_shown
    from maskclf.data import source_photos_dir
    from maskclf.framing import cut_face

    run = make_verifier_run(tmp_path / "verifier")
    model, config = load_run(run)
    config = {**config, "val_fold": 0}
    photos = sorted(read_manifest(faces_dir).query("fold == 0")["source_image"].unique())
    boxes, scores = TWO_CANDIDATES
    crops = np.array([cut_face(source_photos_dir(faces_dir) / name, box, 32) for name in photos for box in boxes], np.float32)
    expected = kept_as_shown(np.tile(scores, len(photos)), face_probabilities(model.predict_on_batch(crops), config),
                             config["face_verifier"]["rule"])
    assert 0 < expected.sum() < len(expected), "the rule keeps some candidates and drops others"

    report = export_run(run, model, config, ["openvino"], faces_dir)
    entry = report["formats"]["openvino"]
    assert f"{2 * len(photos)} of the {2 * len(photos)} candidates" in report["verifier_check"]
    assert entry["usable"] and entry["parity"]["rule_agreement"] == 1.0
    assert entry["parity"]["rule_candidates"] == len(expected)
    assert entry["parity"]["rule_kept_reference"] == entry["parity"]["rule_kept_candidate"] == expected.sum()
    assert export.rule_check(model, faces_dir, {**config, "face_verifier": None}, None) is None, "no verifier"

    real_runner = export.load_runner

    def face_flipped(path, precision=None):  # an export whose P(face) is 1 - the model's
        runner = real_runner(path, precision=precision)
        return lambda x: (lambda out: np.concatenate([out[:, :-1], 1 - out[:, -1:]], axis=1))(np.asarray(runner(x)))

    monkeypatch.setattr(export, "load_runner", face_flipped)
    assert main(["export", "--model", str(run), "--check", str(faces_dir)]) == 1
    entry = read_json(run, PARITY_FILE)["formats"]["openvino"]
    assert not entry["usable"] and entry["parity"]["rule_agreement"] < MIN_AGREEMENT
    assert "the verifier's decisions on candidates agree on >=" in capsys.readouterr().err


def test_the_rule_check_reads_the_candidates_training_found_on_every_photo(faces_dir, tmp_path, two_candidates,
                                                                          monkeypatch):
    from test_verifier import make_verifier_run

    from maskclf import detect
    from maskclf.candidates import photo_candidates
    from maskclf.data import source_photos_dir

    monkeypatch.setattr(detect, "candidate_settings", lambda *a, **k: {"finder": "tests: training's candidates"})
    every_face = read_manifest(faces_dir)
    assert photo_candidates(every_face, source_photos_dir(faces_dir), only_cached=True) is None, "not found yet"
    photo_candidates(every_face, source_photos_dir(faces_dir))  # as training finds them, on every photo
    monkeypatch.setattr(detect, "make_candidate_finder", lambda *a, **k: pytest.fail("the finder ran again"))
    model, config = load_run(make_verifier_run(tmp_path / "verifier"))
    check = export.rule_check(model, faces_dir, {**config, "val_fold": 1}, None)
    assert len(check.scores) == 2 * every_face.query("fold == 1")["source_image"].nunique(), "the held-out photos only"


def test_a_verifier_run_checked_on_crops_without_photos_keeps_p_face_s_side_of_one_half(crops_dir, tmp_path):
    from test_verifier import make_verifier_run

    run = make_verifier_run(tmp_path / "verifier")
    model, config = load_run(run)
    assert export.rule_check(model, crops_dir, config, None) is None, "a folder of crops has no photos to search"
    report = export_run(run, model, config, ["openvino"], crops_dir)
    assert "verifier_check" not in report
    parity_figures = report["formats"]["openvino"]["parity"]
    assert "rule_agreement" not in parity_figures and parity_figures["face_agreement"] == 1.0


def test_parity_without_a_check_set_is_on_fixed_crops(run_dir):
    model, config = load_run(run_dir)
    report = export_run(run_dir, model, config, ["tflite-fp32", "onnx"], None)
    assert report["check"] == "16 fixed random crops"
    for entry in report["formats"].values():
        assert entry["usable"] and entry["parity"]["n"] == 16 and entry["parity"]["max_abs_diff"] < 1e-4


def test_runner_takes_any_batch_size(run_dir):
    model, config = load_run(run_dir)
    export_run(run_dir, model, config, ["tflite-fp32"], None)
    runner = load_runner(run_dir / "export" / "model_fp32.tflite")
    for n in (1, 5, 2):
        crops = np.random.default_rng(n).uniform(0, 255, (n, 32, 32, 3)).astype(np.float32)
        np.testing.assert_allclose(runner(crops), model.predict_on_batch(crops), atol=1e-5)


def test_cli_prints_parity(run_dir, crops_dir, capsys):
    status = main(["export", "--model", str(run_dir), "--format", "tflite-fp32,onnx", "--check", str(crops_dir)])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "tflite-fp32" in out and "onnx" in out and "agreement" in out
    assert "broken.png" in err


@pytest.mark.parametrize("extraction", [False, True])
def test_cli_default_exports_the_formats_that_meet_parity_and_succeeds(run_dir, crops_dir, faces_dir, extraction, capsys):
    status = main(["export", "--model", str(run_dir), "--check", str(faces_dir if extraction else crops_dir)])
    out, err = capsys.readouterr()
    assert status == 0, err
    table = {line.split()[0] for line in out.splitlines()[2:]} - {"keras"}
    assert table == {"openvino"}  # ONNX, int8 and TFLite on request
    written = {p.name for p in (run_dir / "export").iterdir()}
    assert written == {"model_openvino.xml", "model_openvino.bin", "parity.json"}
    assert set(read_json(run_dir, PARITY_FILE)["formats"]) == table


def test_cli_errors(run_dir, tmp_path, capsys):
    assert main(["export", "--model", str(run_dir), "--format", "tflite-int8", "--check", str(tmp_path / "none")]) == 2
    assert "no labelled crops" in capsys.readouterr().err
    assert main(["export", "--model", str(run_dir), "--format", "onnx-int8"]) == 2
    assert "int8 needs calibration crops" in capsys.readouterr().err
    assert main(["export", "--model", str(tmp_path / "missing"), "--format", "tflite-fp32"]) == 2
    assert "missing: no such model folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", "--model", str(run_dir), "--format", "tflite-fp64"])
    assert "unknown format" in capsys.readouterr().err
