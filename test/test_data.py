"""Datasets: every supported layout reads pairs and boxes right; transforms keep modalities and boxes aligned."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from moe_fusion_core.config import load_config
from moe_fusion_core.data import (
    DatasetError,
    PairDataset,
    build_datasets,
    collate_pairs,
    detect_layout,
    ir_to_unit,
    read_dataset,
    split_by_scene,
)
from moe_fusion_core.data.dataset import class_balanced_repeats
from moe_fusion_core.data.split import assign_sequences, guard_frames, read_split_file, split_by_file
from moe_fusion_core.data.transforms import exposure, hflip, random_crop, resize_pair
from moe_fusion_core.image_io import dataset_meta, read_dataset_pair, read_ir, read_vis, rgb_to_luma


def voc_xml(objects: list[tuple[str, int, int, int, int, int]], w: int = 640, h: int = 480) -> str:
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
        f"<xmax>{c}</xmax><ymax>{e}</ymax></bndbox></object>" for n, a, b, c, e, d in objects)
    return f"<annotation><size><width>{w}</width><height>{h}</height></size>{objs}</annotation>"


def test_shared_layout_reads_yolo_boxes_in_pixels(data_dir):
    cfg = load_config("embedded")
    cfg.model.class_names = ["person"]
    recs, layout = read_dataset(data_dir / "llvip_det", cfg.model.class_names)
    assert layout == "pairs"
    assert len(recs) == 11 and all(r.labelled for r in recs)
    assert sum(len(r.boxes) for r in recs) == 53
    rec = next(r for r in recs if r.stem == "010002")
    first = (data_dir / "llvip_det" / "labels" / "010002.txt").read_text().split("\n")[0].split()
    cx, cy, w, h = map(float, first[1:])
    cfg.train.input_size = None
    item = PairDataset([rec], cfg.train, train=False)[0]
    expect = [(cx - w / 2) * 640, (cy - h / 2) * 512, (cx + w / 2) * 640, (cy + h / 2) * 512]
    assert item["boxes"][0].tolist() == pytest.approx(expect, abs=1e-3)
    assert item["ir"].shape == (1, 512, 640) and item["vis_rgb"].shape == (3, 512, 640)
    assert float(item["ir"].min()) >= 0.0 and float(item["ir"].max()) <= 1.0


def test_unlabelled_frames_are_told_apart_from_empty_ones(data_dir, tmp_path):
    root = tmp_path / "mini"
    shutil.copytree(data_dir / "llvip_det", root)
    (root / "labels" / "010002.txt").unlink()  # no file: unlabelled
    (root / "labels" / "010003.txt").write_text("")  # empty file: labelled, no objects
    recs, _ = read_dataset(root, ["person"])
    by = {r.stem: r for r in recs}
    assert not by["010002"].labelled
    assert by["010003"].labelled and len(by["010003"].boxes) == 0


def _m3fd_root(data_dir: Path, tmp_path: Path) -> Path:
    root = tmp_path / "M3FD"
    (root / "Ir").mkdir(parents=True)
    (root / "Vis").mkdir()
    (root / "Annotation").mkdir()
    for i, stem in enumerate(("00001", "00002")):
        shutil.copy(data_dir / "m3fd" / "ir" / "M3FD_00471.png", root / "Ir" / f"{stem}.png")
        shutil.copy(data_dir / "m3fd" / "vis" / "M3FD_00471.png", root / "Vis" / f"{stem}.png")
        (root / "Annotation" / f"{stem}.xml").write_text(
            voc_xml([("People", 11 + i, 21, 60, 120, 0), ("Car", 100, 100, 200, 180, 1)]))
    (root / "train.txt").write_text("00001\n")
    (root / "test.txt").write_text("00002\n")
    return root


def test_m3fd_voc_boxes_are_zero_based_and_difficult_objects_dropped(data_dir, tmp_path):
    root = _m3fd_root(data_dir, tmp_path)
    assert detect_layout(root) == "m3fd"
    classes = load_config("paper").model.class_names
    recs, _ = read_dataset(root, classes)
    assert [r.stem for r in recs] == ["00001", "00002"]
    assert recs[0].boxes.tolist() == [[10.0, 20.0, 59.0, 119.0]]  # 1-based inclusive -> 0-based
    assert recs[0].labels.tolist() == [classes.index("People")]
    train, _ = read_dataset(f"{root}@train", classes)
    assert [r.stem for r in train] == ["00001"]


def test_class_outside_the_model_is_a_clear_error(data_dir, tmp_path):
    root = _m3fd_root(data_dir, tmp_path)
    with pytest.raises(DatasetError, match=r"'People' \(= 'person' in .*CLASS_ALIASES\) is not among the model's "):
        read_dataset(root, ["car"])


def test_dataset_class_names_are_mapped_through_one_alias_table(data_dir, tmp_path):
    """msrs_more calls bicycles 'bike', msrs_det_more 'bicycle', M3FD people 'People': one model class each."""
    names = ["person", "bicycle", "car"]
    root = tmp_path / "bikes"
    for sub in ("ir", "vis", "labels"):
        (root / sub).mkdir(parents=True)
    for sub in ("ir", "vis"):
        shutil.copy(data_dir / "msrs_more" / sub / "01603D.png", root / sub / "01603D.png")
    (root / "classes.txt").write_text("person\nbike\ncar\n")
    (root / "labels" / "01603D.txt").write_text("1 0.5 0.5 0.1 0.2\n0 0.2 0.5 0.05 0.2\n")
    assert read_dataset(root, names)[0][0].labels.tolist() == [1, 0]
    assert read_dataset(root, ["person", "bike", "car"])[0][0].labels.tolist() == [1, 0]
    det = {r.stem: r for r in read_dataset(data_dir / "msrs_det_more", names)[0]}
    assert {int(x) for r in det.values() for x in r.labels} == {0, 1, 2}
    assert read_dataset(_m3fd_root(data_dir, tmp_path), names)[0][0].labels.tolist()[:1] == [0]


def test_llvip_layout_uses_scene_digits_and_official_subsets(data_dir, tmp_path):
    root = tmp_path / "LLVIP"
    for sub, stems in (("train", ["010002", "020003"]), ("test", ["190004"])):
        (root / "infrared" / sub).mkdir(parents=True)
        (root / "visible" / sub).mkdir(parents=True)
        for s in stems:
            shutil.copy(data_dir / "llvip_det" / "ir" / "010002.png", root / "infrared" / sub / f"{s}.png")
            shutil.copy(data_dir / "llvip_det" / "vis" / "010002.png", root / "visible" / sub / f"{s}.png")
    (root / "Annotations").mkdir()
    (root / "Annotations" / "010002.xml").write_text(voc_xml([("person", 1, 1, 50, 90, 0)], 1280, 1024))
    assert detect_layout(root) == "llvip"
    recs, _ = read_dataset(root, ["person"])
    assert {r.stem: r.scene for r in recs} == {"010002": "01", "020003": "02", "190004": "19"}
    assert [r.stem for r in recs if r.labelled] == ["010002"]
    test, _ = read_dataset(f"{root}@test", ["person"])
    assert [r.stem for r in test] == ["190004"]


def test_flir_aligned_layout_pairs_thermal_preview_with_rgb(data_dir, tmp_path):
    root = tmp_path / "FLIR_aligned"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    for fid in ("FLIR_08865", "FLIR_08866", "FLIR_09000"):
        shutil.copy(data_dir / "roadscene" / "ir" / "FLIR_00006.png", root / "JPEGImages" / f"{fid}_PreviewData.jpeg")
        if fid != "FLIR_09000":  # no RGB partner: not a pair
            shutil.copy(data_dir / "roadscene" / "vis" / "FLIR_00006.jpg", root / "JPEGImages" / f"{fid}_RGB.jpg")
    (root / "Annotations" / "FLIR_08865_PreviewData.xml").write_text(voc_xml([("car", 5, 5, 40, 30, 0)]))
    (root / "align_train.txt").write_text("FLIR_08865_PreviewData\n")
    assert detect_layout(root) == "flir_aligned"
    recs, _ = read_dataset(root, ["person", "car", "bicycle"])
    assert [r.stem for r in recs] == ["FLIR_08865", "FLIR_08866"]
    assert recs[0].labels.tolist() == [1]
    sub, _ = read_dataset(f"{root}@train", ["person", "car", "bicycle"])
    assert [r.stem for r in sub] == ["FLIR_08865"]


def test_msrs_layout_reads_train_and_test_folders_with_day_night(data_dir, tmp_path):
    root = tmp_path / "MSRS"
    for sub, stem in (("train", "00004N"), ("test", "00010D")):
        (root / sub / "ir").mkdir(parents=True)
        (root / sub / "vi").mkdir(parents=True)
        shutil.copy(data_dir / "msrs" / "ir" / "00004N.png", root / sub / "ir" / f"{stem}.png")
        shutil.copy(data_dir / "msrs" / "vis" / "00004N.png", root / sub / "vi" / f"{stem}.png")
    assert detect_layout(root) == "msrs"
    recs, _ = read_dataset(root, ["person"])
    assert {r.stem: r.light for r in recs} == {"00004N": "night", "00010D": "day"}
    assert [r.stem for r in read_dataset(f"{root}@test", ["person"])[0]] == ["00010D"]


def test_unknown_or_missing_folder_is_a_clear_error(tmp_path):
    (tmp_path / "junk").mkdir()
    with pytest.raises(DatasetError, match="unknown dataset layout"):
        detect_layout(tmp_path / "junk")
    with pytest.raises(DatasetError, match="not found"):
        detect_layout(tmp_path / "nothing")


def _marked_pair(data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A real visible frame, and an IR image that is its luma with the box region set to 255."""
    vis = read_vis(data_dir / "llvip_det" / "vis" / "010002.png")
    ir = rgb_to_luma(vis).copy()
    ir[ir == 255] = 254
    box = np.array([[200.0, 100.0, 300.0, 260.0]], np.float32)
    ir[100:260, 200:300] = 255
    return ir, vis, box, np.array([0])


def test_crop_and_flip_move_both_modalities_and_boxes_together(data_dir):
    ir, vis, box, lab = _marked_pair(data_dir)
    rng = np.random.default_rng(0)
    for _ in range(20):
        ci, cv, cb, _ = random_crop(ir, vis, box, lab, (256, 256), rng)
        luma = rgb_to_luma(cv)
        outside = ci != 255
        assert np.array_equal(ci[outside], luma[outside])  # same window in both modalities
        if len(cb):
            x1, y1, x2, y2 = cb[0].round().astype(int)
            assert (ci[y1:y2, x1:x2] == 255).all()
            assert (ci == 255).sum() == (y2 - y1) * (x2 - x1)
        fi, fv, fb = hflip(ci, cv, cb)
        assert np.array_equal(fi[:, ::-1], ci) and np.array_equal(fv[:, ::-1], cv)
        if len(fb):
            x1, y1, x2, y2 = fb[0].round().astype(int)
            assert (fi[y1:y2, x1:x2] == 255).all()


def test_resize_scales_boxes_with_the_image(data_dir):
    ir, vis, box, _ = _marked_pair(data_dir)
    ri, rv, rb = resize_pair(ir, vis, box, (256, 320))
    assert ri.shape == (256, 320) and rv.shape == (256, 320, 3)
    assert rb[0].tolist() == pytest.approx([100.0, 50.0, 150.0, 130.0])


def test_split_never_puts_one_scene_on_both_sides(data_dir):
    recs, _ = read_dataset(data_dir / "roadscene", ["person"])
    train, val = split_by_scene(recs, 0.2, seed=1)
    assert len(train) + len(val) == len(recs)
    assert {r.scene for r in train}.isdisjoint({r.scene for r in val})
    assert 0.1 * len(recs) <= len(val) <= 0.45 * len(recs)
    again, _ = split_by_scene(list(reversed(recs)), 0.2, seed=1)
    assert sorted(r.key for r in again) == sorted(r.key for r in train)
    single, _ = read_dataset(data_dir / "llvip_det", ["person"])  # one scene: stays in training
    assert split_by_scene(single, 0.2, seed=1)[1] == []


SHARED_FOLDERS = ("roadscene", "msrs", "llvip_det", "tno", "m3fd", "msrs_more", "m3svd", "tno_more", "llvip_more")
SPLIT_FILE = Path(__file__).resolve().parents[1] / "training" / "splits" / "shared_val.txt"


def _all_shared(data_dir: Path) -> list:
    recs = []
    for name in SHARED_FOLDERS:
        recs += read_dataset(data_dir / name, ["person", "bike", "car"])[0]
    return recs


def test_sequences_follow_the_recordings_across_shared_folders(data_dir):
    seq = assign_sequences(_all_shared(data_dir))
    assert seq["msrs/00004N"] == seq["msrs_more/00005N"] == seq["msrs_more/00039N"]  # one night drive, two folders
    assert seq["msrs_more/00001D"] != seq["msrs_more/00003N"]  # MSRS day and night frames: other recordings
    assert seq["msrs_more/01566D"] == "msrs:day:1566" != seq["msrs/00556D"]
    assert seq["msrs_more/01603D"] == "msrs:day:1600"  # a drive is cut at multiples of MSRS_BLOCK ids
    assert seq["llvip_det/010002"] == seq["llvip_more/010001"]  # one fixed camera
    assert seq["m3svd/0117_1620_v0000"] == seq["m3svd/0117_1620_v0587"] != seq["m3svd/0117_1605_v0000"]
    assert seq["tno/01"] == seq["tno_more/fel_tree_4900"]


def test_shared_split_file_holds_out_whole_sequences_by_day_and_night(data_dir):
    recs = _all_shared(data_dir)
    train, val, missing = split_by_file(recs, read_split_file(SPLIT_FILE))
    assert missing == [] and len(train) + len(val) == len(recs) == 367
    assert len(val) >= 40
    lights = [r.light for r in val]
    assert lights.count("day") >= 10 and lights.count("night") >= 10
    seq = assign_sequences(recs)
    assert {seq[r.key] for r in train}.isdisjoint({seq[r.key] for r in val})
    assert {r.key for r in recs if r.dataset == "msrs"} <= {r.key for r in val}  # the old validation set stays
    assert sum(r.has_boxes for r in val) >= 5 and sum(r.has_boxes for r in train) >= 10  # detection on both sides


def test_split_file_that_cuts_a_sequence_is_rejected(data_dir, tmp_path):
    recs = _all_shared(data_dir)
    keys = [k for k in read_split_file(SPLIT_FILE) if k != "msrs_more/00005N"]
    with pytest.raises(ValueError, match=r"msrs:night:3.*msrs_more/00005N"):
        split_by_file(recs, keys)
    bad = tmp_path / "split.txt"
    bad.write_text("msrs/00004N\nmsrs 00008N\n")
    with pytest.raises(ValueError, match=r"split\.txt:2"):
        read_split_file(bad)
    cfg = load_config("embedded")
    cfg.model.class_names = ["person", "car"]
    cfg.train.split_file = str(SPLIT_FILE)
    _, val, _, info = build_datasets([data_dir / "msrs", data_dir / "msrs_more"], cfg)
    assert len(val) == 16 + 29 and info["split_file_keys_not_in_data"] == 64 - 45  # M3SVD not passed


SPLIT_V3 = SPLIT_FILE.with_name("shared_val_v3.txt")


def test_msrs_drives_are_cut_into_blocks_and_their_neighbours_guarded(data_dir):
    recs = _all_shared(data_dir) + read_dataset(data_dir / "msrs_det_more", ["person", "bike", "car"])[0]
    seq = assign_sequences(recs)
    assert seq["msrs/00537D"] == seq["msrs_det_more/00500D"] == seq["msrs_det_more/00596D"] == "msrs:day:500"
    assert seq["msrs_det_more/00606D"] == "msrs:day:600" and seq["msrs_det_more/00258D"] == "msrs:day:258"
    assert seq["msrs/00004N"] == seq["msrs_more/00039N"] == "msrs:night:3"  # short drives keep their old key
    guard = set(guard_frames(recs, {"msrs_det_more/00596D"}))
    assert {"msrs_det_more/00581D", "msrs_det_more/00606D"} <= guard  # 15 and 10 ids away
    assert "msrs_det_more/00621D" not in guard and "msrs_det_more/00596D" not in guard  # 25 ids away; itself
    assert all(r.key not in guard for r in recs if r.light == "night" or r.dataset == "roadscene")


def test_v3_split_holds_out_labelled_road_sequences_and_another_camera(data_dir):
    recs = _all_shared(data_dir) + read_dataset(data_dir / "msrs_det_more", ["person", "bike", "car"])[0]
    keys = read_split_file(SPLIT_V3)
    train, val, missing = split_by_file(recs, keys)
    guard = set(guard_frames(recs, set(keys)))
    assert missing == [] and len(train) + len(val) + len(guard) == len(recs) == 592
    assert {r.key for r in val} >= set(read_split_file(SPLIT_FILE))  # v2's validation frames stay validation
    seq = assign_sequences(recs)
    assert {seq[r.key] for r in train}.isdisjoint({seq[r.key] for r in val})
    assert not guard & {r.key for r in train}
    lab = [r for r in val if r.has_boxes]
    assert len(lab) >= 70 and {int(x) for r in lab for x in r.labels} == {0, 1, 2}
    assert {r.light for r in lab} == {"day", "night"} and any(r.dataset.startswith("llvip") for r in lab)
    assert not any(r.dataset.startswith("llvip") for r in train)  # LLVIP's camera: validation only
    assert sum(r.has_boxes for r in train) >= 120


def test_v4_split_holds_out_sequences_of_every_dataset(data_dir):
    recs = _all_shared(data_dir) + read_dataset(data_dir / "msrs_det_more", ["person", "bike", "car"])[0]
    keys = read_split_file(SPLIT_FILE.with_name("shared_val_v4.txt"))
    train, val, missing = split_by_file(recs, keys)
    guard = set(guard_frames(recs, set(keys)))
    assert missing == [] and len(train) + len(val) + len(guard) == len(recs) == 592
    assert {r.key for r in val} >= set(read_split_file(SPLIT_V3))  # v3 (and so v2's 64 pairs) stay validation
    seq = assign_sequences(recs)
    assert {seq[r.key] for r in train}.isdisjoint({seq[r.key] for r in val})
    assert not guard & {r.key for r in train}
    assert {r.dataset for r in val} == set(SHARED_FOLDERS) | {"msrs_det_more"}  # every dataset has validation pairs
    for ds in ("roadscene", "m3svd"):  # both sides keep frames of these, the road sets by day and by night
        assert {r.light for r in val if r.dataset == ds} == {r.light for r in train if r.dataset == ds} == {
            "day", "night"}
    assert sum(r.dataset == "roadscene" for r in val) >= 20 and sum(r.dataset == "roadscene" for r in train) >= 140


def test_class_balanced_repeats_favour_frames_of_rare_classes(data_dir):
    recs = [r for r in read_dataset(data_dir / "msrs_det_more", ["person", "bicycle", "car"])[0] if r.has_boxes]
    assert class_balanced_repeats(recs, 0.0, seed=1) is recs
    out = class_balanced_repeats(recs, 0.6, seed=1)
    assert out == class_balanced_repeats(recs, 0.6, seed=1) and len(out) > len(recs)
    counts = {r.key: 0 for r in recs}
    for r in out:
        counts[r.key] += 1
    bike = [counts[r.key] for r in recs if 1 in r.labels.tolist()]
    person_only = [counts[r.key] for r in recs if set(r.labels.tolist()) == {0}]
    assert min(counts.values()) >= 1 and np.mean(bike) > np.mean(person_only) == 1.0
    with pytest.raises(ValueError, match="class_repeat_threshold"):
        class_balanced_repeats(recs, -1.0, seed=1)


def test_augmentation_depends_only_on_seed_epoch_and_index(data_dir):
    cfg = load_config("embedded")
    cfg.model.class_names = ["person"]
    cfg.train.input_size, cfg.train.crop, cfg.train.hflip, cfg.train.scale_range = None, (96, 96), 0.5, (0.5, 1.0)
    recs, _ = read_dataset(data_dir / "llvip_det", ["person"])
    a, b = PairDataset(recs, cfg.train), PairDataset(recs, cfg.train)
    assert torch.equal(a[3]["ir"], b[3]["ir"])
    b.set_epoch(1)
    assert not torch.equal(a[3]["ir"], b[3]["ir"])
    assert a[3]["ir"].shape == (1, 96, 96)


def test_16_bit_infrared_is_trained_on_as_the_engine_will_see_it(data_dir):
    from moe_fusion_core.engine import FusionEngine

    ir8 = read_ir(next((data_dir / "llvip_det" / "ir").iterdir()))
    ir16 = ir8.astype(np.uint16) * 40 + 20000  # a radiometric frame with the same content
    ir16[5, 5] = 65535  # one hot (dead) pixel
    train_view = ir_to_unit(ir16)
    engine_view = FusionEngine(device="cpu", detections=False).thermal_normalizer(ir16)
    assert np.array_equal(np.round(train_view * 255).astype(np.uint8), engine_view)
    assert train_view.std() > 0.5 * (ir8 / 255.0).std()  # the hot pixel does not squash the frame
    assert np.array_equal(ir_to_unit(ir8), ir8.astype(np.float32) / 255)  # 8-bit passes through


def test_exposure_darkens_like_a_camera_and_keeps_8_bit_grey_levels(data_dir):
    vis = read_vis(next((data_dir / "llvip_det" / "vis").iterdir()))
    dark = exposure(vis, 0.2, 1.0)
    assert dark.dtype == np.uint8 and dark.shape == vis.shape
    assert np.abs(dark.astype(float) - 0.2 * vis).max() <= 0.5  # gain only: a scaled, re-rounded frame
    assert np.all(np.diff(exposure(np.arange(256, dtype=np.uint8), 0.7, 1.3).astype(int)) >= 0)  # monotone
    assert exposure(vis, 4.0, 1.0).max() == 255  # over-exposure saturates
    ir = np.linspace(0, 1, 1000, dtype=np.float32)
    out = exposure(ir, 0.1, 1.4)
    assert out.dtype == np.float32 and np.allclose(out * 255, np.round(out * 255), atol=1e-4)  # on the 8-bit grid
    assert len(np.unique(out)) <= 27  # 0.1 of the range keeps ~26 grey levels, as a real dark frame
    assert len(np.unique(exposure(ir, 0.1, 1.4, levels=None))) > 500  # deeper sources stay continuous
    with pytest.raises(ValueError, match="positive gain"):
        exposure(vis, 0.0, 1.0)


def test_exposure_augmentation_changes_each_modality_on_its_own_and_leaves_geometry(data_dir):
    cfg = load_config("embedded")
    cfg.model.class_names = ["person"]
    cfg.train.input_size, cfg.train.crop, cfg.train.hflip, cfg.train.scale_range = None, (96, 96), 0.5, (0.5, 1.0)
    recs, _ = read_dataset(data_dir / "llvip_det", ["person"])
    plain = PairDataset(recs, cfg.train)
    aug = PairDataset(recs, dataclasses.replace(cfg.train, exposure_p=1.0))
    gains = []
    for i in range(4):
        a, b = plain[i], aug[i]
        assert torch.equal(a["boxes"], b["boxes"])  # same crop and flip
        for key in ("ir", "vis_rgb"):  # (the luma of a changed RGB image is a function of the RGB values only)
            x, y = a[key].flatten().numpy(), b[key].flatten().numpy()
            assert not np.array_equal(x, y)
            order = np.argsort(x, kind="stable")
            assert np.all(np.diff(y[order]) >= -1e-6)  # a monotone grey-level map of the same pixels
            gains.append(float(np.median(y[x > 0.2] / x[x > 0.2])))
    assert len({round(g, 2) for g in gains}) == len(gains)  # infrared and visible drawn independently
    cfg.train.gain_range = (0.0, 1.0)
    with pytest.raises(ValueError, match="gain_range"):
        PairDataset(recs, cfg.train)
    cfg.train.gain_range, cfg.train.exposure_p = (0.5, 1.0), 1.5
    with pytest.raises(ValueError, match="exposure_p"):
        PairDataset(recs, cfg.train)


def test_build_datasets_drops_frames_without_boxes_unless_asked(data_dir, tmp_path):
    cfg = load_config("embedded")
    cfg.model.class_names = ["person"]
    cfg.train.val_fraction = 0.0
    train, _, names, info = build_datasets([data_dir / "llvip_det", data_dir / "tno"], cfg)
    assert names == ["person"] and len(train) == 11
    assert len(info["dropped_without_boxes"]) == 42
    cfg.train.keep_unlabelled, cfg.train.labelled_repeat = True, 3
    train, _, _, info = build_datasets([data_dir / "llvip_det", data_dir / "tno"], cfg)
    assert len(train) == 42 + 3 * 11
    with pytest.raises(ValueError, match="share the name"):
        build_datasets([data_dir / "tno", data_dir / "tno"], cfg)


def test_dataset_repeat_weighs_the_named_dataset_and_refuses_unknown_names(data_dir):
    cfg = load_config("embedded")
    cfg.model.class_names = ["person"]
    cfg.train.val_fraction, cfg.train.keep_unlabelled = 0.0, True
    cfg.train.dataset_repeat = {"llvip_det": 4}
    train, _, _, info = build_datasets([data_dir / "llvip_det", data_dir / "tno"], cfg)
    assert len(train) == 42 + 4 * 11
    assert sum(k.startswith("llvip_det/") for k in info["train"]) == 44
    cfg.train.dataset_repeat = {"llvip": 4}  # a typo must not train on the unweighted data silently
    with pytest.raises(ValueError, match=r"dataset_repeat names \['llvip'\]"):
        build_datasets([data_dir / "llvip_det", data_dir / "tno"], cfg)
    cfg.train.dataset_repeat = {"tno": 0}
    with pytest.raises(ValueError, match="integers >= 1"):
        build_datasets([data_dir / "llvip_det", data_dir / "tno"], cfg)
    cfg.train.dataset_repeat = {"tno": 2.5}
    with pytest.raises(ValueError, match="integers >= 1"):
        build_datasets([data_dir / "llvip_det", data_dir / "tno"], cfg)
    cfg.train.dataset_repeat = ["tno"]  # a list in the YAML instead of a mapping
    with pytest.raises(ValueError, match="must map dataset folder names"):
        build_datasets([data_dir / "llvip_det", data_dir / "tno"], cfg)


def test_collate_refuses_mixed_sizes_with_a_hint(data_dir):
    cfg = load_config("embedded")
    cfg.train.input_size = None
    recs, _ = read_dataset(data_dir / "roadscene", ["person"])
    ds = PairDataset(recs[:2], cfg.train, train=False)
    assert ds[0]["ir"].shape != ds[1]["ir"].shape
    with pytest.raises(ValueError, match=r"train\.input_size or train\.crop"):
        collate_pairs([ds[0], ds[1]])
    cfg.train.input_size = (64, 96)
    batch = collate_pairs([ds[0], ds[1]])
    assert batch["ir"].shape == (2, 1, 64, 96) and batch["vis_rgb"].shape == (2, 3, 64, 96)
    assert read_ir(recs[0].ir).dtype == np.uint8


def test_dataset_folder_rows_and_pairs_are_read_by_stem(sample_dir, tmp_path):
    """The shared layout's meta.csv rows (quoted commas kept) and a pair found by stem, whatever the visible suffix."""
    rows = dataset_meta(sample_dir / "pairs")
    assert {r["stem"] for r in rows} == {p.stem for p in (sample_dir / "pairs" / "ir").iterdir()}
    assert all(r["light"] in ("day", "night") for r in rows)
    assert any("," in r["note"] for r in rows)  # a quoted field with a comma stays one field
    ir, vis = read_dataset_pair(sample_dir / "pairs", rows[0]["stem"])
    assert ir.ndim == 2 and vis.shape == (*ir.shape, 3)
    with pytest.raises(FileNotFoundError, match="no_such_stem"):
        read_dataset_pair(sample_dir / "pairs", "no_such_stem")
    with pytest.raises(FileNotFoundError, match=r"meta\.csv"):
        dataset_meta(tmp_path)
