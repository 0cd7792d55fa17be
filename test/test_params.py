"""Parameter declarations, validation, and config/fusion.yaml agreeing with them."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from moe_fusion_ros.params import (
    DECLARATIONS,
    FusionParams,
    _plain,
    check_change,
    check_value,
    flatten,
    is_ours,
    load_params_file,
    params_yaml,
    validate,
)

REPO = Path(__file__).resolve().parents[1]
YAML = REPO / "config" / "fusion.yaml"


def test_every_declaration_is_a_field_with_a_typed_default():
    assert {f.name for f in fields(FusionParams)} == {s.attr for s in DECLARATIONS}
    assert len({s.name for s in DECLARATIONS}) == len(DECLARATIONS)
    for s in DECLARATIONS:
        assert s.description
        assert _plain(check_value(s.name, s.default)) == s.default
        assert type(s.default) is {"bool": bool, "int": int, "double": float, "string": str,
                                   "double_array": list, "string_array": list}[s.type], s.name


def test_yaml_file_and_declarations_agree():
    data = yaml.safe_load(YAML.read_text())
    assert list(data) == ["/**"] and "ros__parameters" in data["/**"]
    values = load_params_file(YAML)
    assert set(values) == {s.name for s in DECLARATIONS}
    for s in DECLARATIONS:
        assert values[s.name] == s.default, s.name
        assert type(values[s.name]) is type(s.default), f"{s.name}: YAML type differs (write 1.0 for doubles)"
    assert validate(values).as_dict() == values
    assert flatten(yaml.safe_load(params_yaml())["/**"]["ros__parameters"]) == values


@pytest.mark.parametrize("name,value,match", [
    ("sync.slop", 2.0, "outside"),
    ("sync.slop", "0.02", "double"),
    ("sync.queue_size", 2.5, "int"),
    ("sync.queue_size", True, "int"),
    ("thermal.norm.mode", "auto", "one of"),
    ("model.precision", "int8", "one of"),
    ("no.such", 1, "unknown"),
    ("detections.classes", "person", "list of strings"),
    ("detections.classes", ["person", 3], "list of strings"),
])
def test_bad_values_are_rejected_with_the_name(name, value, match):
    with pytest.raises(ValueError, match=match):
        validate({name: value})


def test_cross_field_checks_and_int_for_double():
    assert validate({"sync.slop": 0.05}).sync_slop == 0.05
    assert validate({"thermal.norm.hi": 4000}).thermal_norm_hi == 4000.0
    with pytest.raises(ValueError, match="p_lo"):
        validate({"thermal.norm.p_lo": 50.0, "thermal.norm.p_hi": 40.0})
    with pytest.raises(ValueError, match=r"thermal\.norm\.lo"):
        validate({"thermal.norm.mode": "fixed", "thermal.norm.lo": 100.0, "thermal.norm.hi": 10.0})
    with pytest.raises(ValueError, match=r"model\.device"):
        validate({"model.device": "gpu0"})
    norm = validate({"thermal.norm.mode": "fixed", "thermal.norm.lo": 10.0, "thermal.norm.hi": 20.0,
                     "thermal.invert": True}).thermal_normalization()
    assert (norm.mode, norm.lo, norm.hi, norm.invert) == ("fixed", 10.0, 20.0, True)


def test_live_changes_respect_read_only():
    cur = validate()
    assert check_change("model.score_threshold", 0.5, cur).model_score_threshold == 0.5
    assert check_change("detections.classes", ["car", ""], cur).detections_classes == ("car",)  # '' = the CLI's []
    assert check_change("detections.classes", [""], cur).detections_classes == ()
    with pytest.raises(ValueError, match="read-only"):
        check_change("model.device", "cpu", cur)
    assert check_change("model.device", cur.model_device, cur) == cur


def test_params_file_errors(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("moe_fusion:\n  ros__parameters:\n    sync:\n      slop: 0.02\n")
    with pytest.raises(ValueError, match="/\\*\\*"):
        load_params_file(bad)


def test_homography_is_nine_numbers_of_an_invertible_matrix_normalised_to_h22_one():
    assert validate().homography() is None  # identity: resize only
    h = validate({"registration.homography": [2.0, 0, 20, 0, 2.0, 10, 0, 0, 2.0]})
    assert h.registration_homography == (1.0, 0.0, 10.0, 0.0, 1.0, 5.0, 0.0, 0.0, 1.0)
    assert h.homography() == h.registration_homography
    assert h.as_dict()["registration.homography"] == [1.0, 0.0, 10.0, 0.0, 1.0, 5.0, 0.0, 0.0, 1.0]
    for bad, match in (([1.0, 0, 0], "9 finite"), ([1, 0, 0, 0, 1, 0, 0, 0, float("nan")], "9 finite"),
                       ([0.0] * 9, "invertible"), ([1, 2, 3, 2, 4, 6, 0, 0, 1], "invertible"), ("eye", "9")):
        with pytest.raises(ValueError, match=match):
            validate({"registration.homography": bad})


def test_live_changes_of_new_pairing_settings_and_foreign_parameters():
    cur = validate()
    assert check_change("sync.time_jump_s", 2.0, cur).sync_time_jump_s == 2.0
    assert check_change("inputs.single_modality", False, cur).inputs_single_modality is False
    assert check_change("registration.homography", [1, 0, 5, 0, 1, 0, 0, 0, 1], cur).homography()[2] == 5.0
    with pytest.raises(ValueError, match="outside"):
        check_change("sync.idle_flush_s", 0.0, cur)
    # parameters rclpy declares itself are not ours to check (a node must accept them)
    for name in ("use_sim_time", "qos_overrides./fused/image.publisher.depth", "diagnostic_updater.period"):
        assert not is_ours(name)
    assert is_ours("sync.slop")


def test_model_backend_selects_onnxruntime_and_rejects_unknown_backends():
    p = validate({"model.backend": "onnxruntime", "model.deploy": False})
    assert (p.model_backend, p.model_deploy) == ("onnxruntime", False)
    assert validate().model_backend == "torch" and validate().model_deploy is True
    with pytest.raises(ValueError, match=r"model\.backend.*torch, onnxruntime"):
        validate({"model.backend": "tensorrt"})
    with pytest.raises(ValueError, match="read-only"):
        check_change("model.backend", "onnxruntime", validate())
