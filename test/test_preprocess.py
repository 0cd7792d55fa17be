"""Thermal normalisation (moe_fusion_core.preprocess) and Image-message decoding (moe_fusion_ros.thermal)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from moe_fusion_core.preprocess import ThermalNormalization, ThermalNormalizer
from moe_fusion_ros.thermal import (
    MalformedImage,
    UnsupportedEncoding,
    decode_thermal,
    decode_visible,
    image_to_array,
    thermal_array,
)


def msg(arr: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False) -> SimpleNamespace:
    a = np.ascontiguousarray(arr)
    if bigendian:
        a = a.astype(a.dtype.newbyteorder(">"))
    h = a.shape[0]
    row = a.nbytes // h
    rows = a.view(np.uint8).reshape(h, row)
    data = np.concatenate([rows, np.full((h, pad), 0xAB, np.uint8)], axis=1).tobytes()
    return SimpleNamespace(height=h, width=a.shape[1], encoding=encoding, is_bigendian=int(bigendian),
                           step=row + pad, data=data)


# ---------------------------------------------------------------- normalisation
def test_uint8_passes_through_and_invert_flips():
    img = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert np.array_equal(ThermalNormalizer(ThermalNormalization(mode="minmax"))(img), img)
    inv = ThermalNormalizer(ThermalNormalization(mode="percentile", invert=True))(img)
    assert np.array_equal(inv, 255 - img)


def test_fixed_window_maps_lo_hi_to_0_255_and_clips():
    img = np.array([[1000, 2000, 3000, 500, 4000]], np.uint16)
    out = ThermalNormalizer(ThermalNormalization(mode="fixed", lo=1000, hi=3000))(img)
    assert out.dtype == np.uint8
    assert out.tolist() == [[0, 128, 255, 0, 255]]


def test_percentile_ignores_hot_spot_while_minmax_does_not():
    rng = np.random.default_rng(0)
    img = rng.integers(29000, 31000, (64, 64)).astype(np.uint16)
    img[0, 0] = 65000  # one hot pixel
    pct = ThermalNormalizer(ThermalNormalization(mode="percentile", ema=0.0))(img)
    mm = ThermalNormalizer(ThermalNormalization(mode="minmax", ema=0.0))(img)
    assert pct[1:].std() > 50  # the scene uses the whole grey range
    assert mm[1:].std() < 5  # squashed by the hot pixel
    assert pct[0, 0] == 255


def test_nan_inf_and_flat_images():
    img = np.full((8, 8), 300.0, np.float32)
    out = ThermalNormalizer(ThermalNormalization(mode="minmax", ema=0.0))(img)
    assert out.dtype == np.uint8 and not out.any()  # flat -> zeros, not NaN
    img[0, 0], img[0, 1], img[0, 2] = np.nan, np.inf, -np.inf
    img[1] = 310.0
    out = ThermalNormalizer(ThermalNormalization(mode="minmax", ema=0.0))(img)
    assert (out[0, 0], out[0, 1], out[0, 2]) == (0, 255, 0)
    assert out[1].min() == 255 and out[2].max() == 0
    allnan = np.full((4, 4), np.nan, np.float32)
    assert not ThermalNormalizer()(allnan).any()


def test_ema_smooths_the_window_over_frames():
    a = np.linspace(0, 1000, 100, dtype=np.float32).reshape(10, 10)
    norm = ThermalNormalizer(ThermalNormalization(mode="minmax", ema=0.5))
    norm(a)
    assert norm.window == (0.0, 1000.0)
    norm(a + 1000)
    assert norm.window == pytest.approx((500.0, 1500.0))
    norm.reset()
    norm(a + 1000)
    assert norm.window == pytest.approx((1000.0, 2000.0))


@pytest.mark.parametrize("kwargs", [{"mode": "auto"}, {"mode": "fixed", "lo": 5, "hi": 5}, {"p_lo": 99, "p_hi": 1},
                                    {"ema": 1.0}])
def test_bad_configuration_is_rejected(kwargs):
    with pytest.raises(ValueError):
        ThermalNormalization(**kwargs)


def test_bad_images_are_rejected():
    n = ThermalNormalizer()
    with pytest.raises(ValueError, match="H×W"):
        n(np.zeros((2, 3, 3), np.uint16))
    with pytest.raises(ValueError, match="empty"):
        n(np.zeros((0, 4), np.uint16))


# ---------------------------------------------------------------- decoding
@pytest.mark.parametrize("encoding,dtype", [("mono8", np.uint8), ("8UC1", np.uint8), ("mono16", np.uint16),
                                            ("16UC1", np.uint16), ("32FC1", np.float32)])
@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize("bigendian", [False, True])
def test_single_channel_roundtrip_with_padding_and_endianness(encoding, dtype, pad, bigendian):
    rng = np.random.default_rng(1)
    arr = (rng.random((5, 7)) * 60000).astype(dtype)
    out = image_to_array(msg(arr, encoding, pad, bigendian))
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert np.array_equal(out, arr)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_colour_encodings_decode_to_rgb(encoding):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 10
    arr = rgb if encoding.startswith("rgb") else rgb[..., ::-1]
    if encoding.endswith("a8"):
        arr = np.concatenate([arr, np.full((4, 6, 1), 7, np.uint8)], axis=2)
    out = decode_visible(msg(arr, encoding, pad=2))
    assert out.shape == (4, 6, 3) and np.array_equal(out, rgb)
    grey = thermal_array(msg(arr, encoding))
    assert grey.shape == (4, 6) and abs(int(grey[0, 0]) - round(0.299 * 200 + 0.587 * 100 + 0.114 * 10)) <= 1


def test_mono_visible_is_replicated_and_mono16_thermal_is_normalised():
    g = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(decode_visible(msg(g, "mono8")), np.repeat(g[:, :, None], 3, axis=2))
    raw = np.linspace(29000, 31000, 12).astype(np.uint16).reshape(3, 4)
    out = decode_thermal(msg(raw, "mono16", bigendian=True))
    assert out.dtype == np.uint8 and out.min() <= 5 and out.max() >= 250


def test_unsupported_and_malformed_messages_raise_clear_errors():
    ok = msg(np.zeros((4, 4), np.uint8), "mono8")
    with pytest.raises(UnsupportedEncoding, match="yuv422"):
        image_to_array(SimpleNamespace(**{**vars(ok), "encoding": "yuv422"}))
    with pytest.raises(MalformedImage, match="too short"):
        image_to_array(SimpleNamespace(**{**vars(ok), "data": ok.data[:10]}))
    with pytest.raises(MalformedImage, match="step"):
        image_to_array(SimpleNamespace(**{**vars(ok), "step": 2}))
    with pytest.raises(MalformedImage, match="zero size"):
        image_to_array(SimpleNamespace(**{**vars(ok), "height": 0}))
    with pytest.raises(UnsupportedEncoding):
        decode_visible(msg(np.zeros((2, 2), np.float32), "32FC1"))


def test_sixteen_bit_fast_path_equals_the_float_definition():
    rng = np.random.default_rng(5)
    norm = ThermalNormalizer(ThermalNormalization(mode="percentile", p_lo=2.0, p_hi=97.0, ema=0.0))
    for n in (1, 7, 1000):
        a = rng.integers(int(rng.integers(0, 30000)), 65536, (n, 13)).astype(np.uint16)
        lo, hi = np.percentile(a, (2.0, 97.0))
        out = norm(a)
        assert norm.window == pytest.approx((lo, hi))
        if hi > lo:
            ref = np.clip((a.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo)), 0, 255) + 0.5
            assert np.abs(out.astype(int) - ref.astype(np.uint8).astype(int)).max() <= 1
        else:
            assert not out.any()
