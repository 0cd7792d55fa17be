"""``moe-fusion fuse``: folders of real pairs in, one fused PNG per pair out, problems listed and skipped.

The pairs are the repository's sample (sample/pairs: real M3SVD day and night pairs), so these tests need nothing
outside the clone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from content import assert_real_picture

from moe_fusion_core.checkpoint import read_config
from moe_fusion_core.engine import DEFAULT_MODEL_DIR, FusionEngine
from moe_fusion_core.image_io import read_ir, read_vis
from moe_fusion_ros.cli import main

# stem -> scale applied to the real 640×480 pair; all sizes odd in at least one dimension
PAIRS = {"0117_1620_v0287": 0.5, "0111_1753_0000": 0.35, "0111_1803_0000": 0.27}
THERMAL16 = "thermal16"  # one more pair whose IR file is 16-bit
FUSED = sorted([*PAIRS, THERMAL16])


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    """The shipped (embedded) model: real fused images, so that "written = what the engine returns" can fail."""
    return DEFAULT_MODEL_DIR


def copy_pair(sample_dir: Path, stem: str, scale: float, ir_dir: Path, vis_dir: Path, new_stem: str | None = None,
              ir_scale: float | None = None) -> tuple[int, int]:
    """Write a real sample pair (resized by ``scale``; IR by ``ir_scale`` if given); returns the visible (h, w)."""
    src = sample_dir / "pairs"
    ir = cv2.imread(str(src / "ir" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
    vis_file = next((src / "vis").glob(f"{stem}.*"))
    vis = cv2.imread(str(vis_file), cv2.IMREAD_COLOR)
    name = new_stem or stem
    h, w = vis.shape[:2]
    if scale != 1.0:
        size = (int(w * scale) | 1, int(h * scale) | 1)
        vis = cv2.resize(vis, size, interpolation=cv2.INTER_AREA)
    ir_s = scale if ir_scale is None else ir_scale
    if ir_s != 1.0:
        ir = cv2.resize(ir, (int(w * ir_s) | 1, int(h * ir_s) | 1), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(ir_dir / f"{name}.png"), ir)
    if scale == 1.0:
        shutil.copy(vis_file, vis_dir / f"{name}{vis_file.suffix}")  # untouched JPEG bytes
    else:
        cv2.imwrite(str(vis_dir / f"{name}.jpg"), vis)
    return vis.shape[:2]


@pytest.fixture(scope="module")
def folders(tmp_path_factory, sample_dir) -> dict:
    root = tmp_path_factory.mktemp("pairs")
    ir_dir, vis_dir = root / "ir", root / "vis"
    ir_dir.mkdir()
    vis_dir.mkdir()
    sizes = {stem: copy_pair(sample_dir, stem, s, ir_dir, vis_dir) for stem, s in PAIRS.items()}
    shutil.copy(sample_dir / "pairs" / "meta.csv", root / "meta.csv")  # day/night tags for gates.jsonl
    # a radiometric 16-bit infrared PNG (raw counts with an offset), normalised by the engine
    sizes[THERMAL16] = copy_pair(sample_dir, "0115_1834_0010", 0.3, ir_dir, vis_dir, new_stem=THERMAL16)
    ir8 = cv2.imread(str(ir_dir / f"{THERMAL16}.png"), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(ir_dir / f"{THERMAL16}.png"), (7_000 + 20 * ir8.astype(np.uint16)))
    assert cv2.imread(str(ir_dir / f"{THERMAL16}.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    # an infrared frame without a visible partner
    cv2.imwrite(str(ir_dir / "lonely.png"), np.full((40, 60), 128, np.uint8))
    # a pair whose visible file is a truncated JPEG
    copy_pair(sample_dir, "0117_1605_v0327", 0.3, ir_dir, vis_dir, new_stem="broken")
    jpg = vis_dir / "broken.jpg"
    jpg.write_bytes(jpg.read_bytes()[:200])
    return {"root": root, "ir": ir_dir, "vis": vis_dir, "sizes": sizes}


@pytest.fixture(scope="module")
def fused_run(folders, checkpoint, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("out") / "fused"
    rc = main(["fuse", "--ir", str(folders["ir"]), "--vis", str(folders["vis"]), "--out", str(out),
               "--checkpoint", str(checkpoint), "--device", "cpu", "--color", "--detections",
               "--score-threshold", "0.0", "--no-progress"])
    return {"rc": rc, "out": out}


def test_skipped_files_make_the_exit_code_one(fused_run):
    assert fused_run["rc"] == 1


def test_one_grey_png_per_pair_at_the_visible_size(fused_run, folders):
    out = fused_run["out"]
    assert sorted(p.stem for p in out.glob("*.png")) == FUSED
    assert len(set(folders["sizes"].values())) == len(FUSED)  # really different sizes
    for stem, (h, w) in folders["sizes"].items():
        img = cv2.imread(str(out / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert img.dtype == np.uint8 and img.shape == (h, w), stem
        assert img.std() > 3, stem  # an image, not a constant


def test_written_images_are_what_the_engine_returns(fused_run, folders, checkpoint):
    engine = FusionEngine(checkpoint, device="cpu", detections=False)
    for stem in ("0111_1753_0000", THERMAL16):
        ir = read_ir(folders["ir"] / f"{stem}.png")
        res = engine.fuse(ir, read_vis(folders["vis"] / f"{stem}.jpg"), color=True)
        written = cv2.imread(str(fused_run["out"] / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert_real_picture(res.fused, *engine.prepare(ir, read_vis(folders["vis"] / f"{stem}.jpg")))
        np.testing.assert_array_equal(written, res.fused)
        color = cv2.cvtColor(cv2.imread(str(fused_run["out"] / "color" / f"{stem}.png")), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(color, res.color)
    assert ir.dtype == np.uint16 and written.std() > 3  # the 16-bit frame was normalised, not clipped


def test_colour_and_detection_outputs_exist_for_every_fused_pair(fused_run, folders, checkpoint):
    out = fused_run["out"]
    for stem, (h, w) in folders["sizes"].items():
        color = cv2.imread(str(out / "color" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert color.shape == (h, w, 3)
        det = json.loads((out / "detections" / f"{stem}.json").read_text())
        assert (det["width"], det["height"]) == (w, h)
        for d in det["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
            assert d["class_name"] in read_config(checkpoint).model.class_names
        track_ids = [d["track_id"] for d in det["detections"]]  # the folder is tracked in stem order
        assert all(isinstance(t, int) and t > 0 for t in track_ids) and len(set(track_ids)) == len(track_ids)
        assert cv2.imread(str(out / "detections" / f"{stem}.jpg")).shape == (h, w, 3)
    assert not (out / "color" / "broken.png").exists() and not (out / "lonely.png").exists()


def test_gate_log_has_one_line_per_fused_pair_with_day_night_tags(fused_run):
    lines = [json.loads(x) for x in (fused_run["out"] / "gates.jsonl").read_text().splitlines()]
    assert sorted(r["stem"] for r in lines) == FUSED
    tags = {r["stem"]: r["daynight"] for r in lines}
    assert tags[THERMAL16] == "unknown"  # not in meta.csv
    assert {tags[s] for s in PAIRS} <= {"day", "night"}
    for r in lines:
        for key in ("mole_fg", "mole_bg", "moge"):
            assert len(r[key]) == 4 and sum(r[key]) == pytest.approx(1.0, abs=1e-3)


def test_summary_lists_the_unpaired_and_the_corrupt_file(fused_run, capsys):
    s = json.loads((fused_run["out"] / "summary.json").read_text())
    assert s["fused"] == len(FUSED) and s["pairs"] == len(FUSED) + 1
    assert list(s["failed"]) == ["broken"] and "not a decodable image" in s["failed"]["broken"]
    assert s["unpaired"] == {"ir": ["lonely"]}
    assert s["device"] == "cpu" and s["precision"] == "fp32"


def test_all_good_pairs_exit_zero_and_mismatch_error_skips_pairs(tmp_path, sample_dir, checkpoint, capsys):
    ir_dir, vis_dir = tmp_path / "ir", tmp_path / "vis"
    ir_dir.mkdir()
    vis_dir.mkdir()
    h, w = copy_pair(sample_dir, "0111_1753_0000", 0.25, ir_dir, vis_dir)
    copy_pair(sample_dir, "0111_1803_0000", 0.25, ir_dir, vis_dir, ir_scale=0.3)  # IR of another size
    common = ["--checkpoint", str(checkpoint), "--device", "cpu", "--no-progress", "--ir", str(ir_dir),
              "--vis", str(vis_dir)]
    assert main(["fuse", *common, "--out", str(tmp_path / "resize")]) == 0
    assert cv2.imread(str(tmp_path / "resize" / "0111_1803_0000.png"), cv2.IMREAD_UNCHANGED).shape[:2] == \
        cv2.imread(str(vis_dir / "0111_1803_0000.jpg")).shape[:2]
    assert cv2.imread(str(tmp_path / "resize" / "0111_1753_0000.png"), cv2.IMREAD_UNCHANGED).shape == (h, w)
    capsys.readouterr()
    assert main(["fuse", *common, "--out", str(tmp_path / "strict"), "--mismatch", "error"]) == 1
    s = json.loads((tmp_path / "strict" / "summary.json").read_text())
    assert s["fused"] == 1 and "size mismatch" in s["failed"]["0111_1803_0000"]
    assert "failed 0111_1803_0000" in capsys.readouterr().err


def test_nothing_fused_exits_two(tmp_path, folders, checkpoint, capsys):
    ir_dir, vis_dir = tmp_path / "ir", tmp_path / "vis"
    ir_dir.mkdir()
    vis_dir.mkdir()
    shutil.copy(folders["ir"] / "broken.png", ir_dir)
    shutil.copy(folders["vis"] / "broken.jpg", vis_dir)
    common = ["--checkpoint", str(checkpoint), "--device", "cpu", "--no-progress", "--out", str(tmp_path / "o")]
    assert main(["fuse", "--ir", str(ir_dir), "--vis", str(vis_dir), *common]) == 2
    assert main(["fuse", "--ir", str(tmp_path / "missing"), "--vis", str(vis_dir), *common]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["fuse", "--ir", str(ir_dir), "--vis", str(vis_dir), *common, "--detections",
                 "--classes", "person", "dog"]) == 2
    assert "unknown class(es) dog; the model's classes are person, bicycle, car" in capsys.readouterr().err
