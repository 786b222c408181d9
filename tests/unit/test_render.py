"""Unit tests for explaind.render: colormaps, channel reduction, normalisation, PNG rendering.

The assertions check numbers worked out by hand, not only shapes.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from explaind.errors import InvalidArgument
from explaind.render import (
    COLORMAP_NAMES,
    RenderOptions,
    apply_colormap,
    colormap_anchors,
    encode_png,
    is_diverging,
    normalise,
    reduce_channels,
    render_heatmap,
    render_rgb,
)

VIRIDIS_FIRST = (0x44, 0x01, 0x54)
VIRIDIS_LAST = (0xFD, 0xE7, 0x25)
COOLWARM_BLUE = (0x3B, 0x4C, 0xC0)
COOLWARM_MID = (0xDD, 0xDD, 0xDD)
COOLWARM_RED = (0xB4, 0x04, 0x26)


def _decode(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG"
        assert im.mode == "RGB"
        return np.asarray(im).copy()


def _low_high(name: str) -> tuple[float, float]:
    return (-1.0, 1.0) if is_diverging(name) else (0.0, 1.0)


# --------------------------------------------------------------------------- colormaps


def test_colormap_names() -> None:
    assert set(COLORMAP_NAMES) == {"viridis", "inferno", "magma", "gray", "jet", "coolwarm"}
    assert is_diverging("coolwarm")
    assert not any(is_diverging(n) for n in COLORMAP_NAMES if n != "coolwarm")


@pytest.mark.parametrize("name", COLORMAP_NAMES)
def test_colormap_endpoints_are_the_anchors(name: str) -> None:
    anchors = colormap_anchors(name)
    lo, hi = _low_high(name)
    out = apply_colormap(np.array([[lo, hi]]), name)
    assert out.dtype == np.uint8 and out.shape == (1, 2, 3)
    assert out[0, 0].tolist() == anchors[0].tolist()
    assert out[0, 1].tolist() == anchors[-1].tolist()


@pytest.mark.parametrize("name", COLORMAP_NAMES)
def test_colormap_hits_every_anchor_exactly(name: str) -> None:
    anchors = colormap_anchors(name)
    lo, hi = _low_high(name)
    at = lo + (hi - lo) * np.linspace(0.0, 1.0, len(anchors))
    out = apply_colormap(at[None, :], name)
    assert out[0].tolist() == anchors.tolist()


@pytest.mark.parametrize("name", COLORMAP_NAMES)
def test_colormap_midpoints_interpolate_linearly(name: str) -> None:
    anchors = colormap_anchors(name).astype(np.float64)
    k = len(anchors)
    lo, hi = _low_high(name)
    mids = lo + (hi - lo) * (np.arange(k - 1) + 0.5) / (k - 1)
    out = apply_colormap(mids[None, :], name)[0].astype(np.float64)
    expected = (anchors[:-1] + anchors[1:]) / 2.0
    # Rounded to the nearest level: never more than half a level away.
    assert np.all(np.abs(out - expected) <= 0.5 + 1e-9)


def test_colormap_known_colours() -> None:
    v = apply_colormap(np.array([[0.0, 0.5, 1.0]]), "viridis")
    assert v[0].tolist() == [list(VIRIDIS_FIRST), [0x21, 0x90, 0x8C], list(VIRIDIS_LAST)]
    c = apply_colormap(np.array([[-1.0, 0.0, 1.0]]), "coolwarm")
    assert c[0].tolist() == [list(COOLWARM_BLUE), list(COOLWARM_MID), list(COOLWARM_RED)]
    # grey: 0.25 * 255 = 63.75 -> 64; 0.5 * 255 = 127.5 -> 128 (half up)
    g = apply_colormap(np.array([[0.0, 0.25, 0.5, 1.0]]), "gray")
    assert g[0, :, 0].tolist() == [0, 64, 128, 255]
    assert np.all(g[..., 0] == g[..., 1]) and np.all(g[..., 1] == g[..., 2])
    j = apply_colormap(np.array([[0.0, 0.5, 1.0]]), "jet")
    assert j[0].tolist() == [[0, 0, 128], [128, 255, 128], [128, 0, 0]]
    # magma and inferno both start near black
    assert apply_colormap(np.zeros((1, 1)), "magma")[0, 0].tolist() == [0, 0, 4]
    assert apply_colormap(np.zeros((1, 1)), "inferno")[0, 0].tolist() == [0, 0, 4]


def test_colormap_quarter_point_between_two_anchors() -> None:
    # viridis anchors 0 (#440154) and 1 (#472d7b) sit at 0 and 1/8; 1/32 is a quarter of the way.
    out = apply_colormap(np.array([[1.0 / 32.0]]), "viridis")[0, 0].tolist()
    a, b = np.array([0x44, 0x01, 0x54]), np.array([0x47, 0x2D, 0x7B])
    expected = np.floor(a + 0.25 * (b - a) + 0.5).astype(int).tolist()
    assert out == expected == [69, 12, 94]


def test_colormap_clips_out_of_range_and_nan() -> None:
    out = apply_colormap(np.array([[-5.0, 7.0, np.nan]]), "viridis")
    assert out[0].tolist() == [list(VIRIDIS_FIRST), list(VIRIDIS_LAST), list(VIRIDIS_FIRST)]
    out = apply_colormap(np.array([[-3.0, 3.0]]), "coolwarm")
    assert out[0].tolist() == [list(COOLWARM_BLUE), list(COOLWARM_RED)]


def test_colormap_unknown_name() -> None:
    with pytest.raises(InvalidArgument) as err:
        apply_colormap(np.zeros((2, 2)), "rainbow")
    assert err.value.field == "render.colormap"
    assert "render.colormap" in str(err.value) and "rainbow" in str(err.value)
    assert "viridis" in str(err.value)


def test_colormap_anchors_are_a_copy() -> None:
    a = colormap_anchors("viridis")
    a[0] = 0
    assert colormap_anchors("viridis")[0].tolist() == list(VIRIDIS_FIRST)


# --------------------------------------------------------------------------- reduce_channels


def test_reduce_channels_values() -> None:
    a = np.array([[[1.0, -2.0]], [[-3.0, 4.0]]])  # [C=2, H=1, W=2]
    assert reduce_channels(a).tolist() == [[4.0, 6.0]]
    assert reduce_channels(a, "sum_abs").tolist() == [[4.0, 6.0]]
    assert reduce_channels(a, "max_abs").tolist() == [[3.0, 4.0]]
    assert reduce_channels(a, "sum").tolist() == [[-2.0, 2.0]]


def test_reduce_channels_passes_2d_through() -> None:
    a = np.array([[1, -2], [3, 0]], dtype=np.int32)
    out = reduce_channels(a, "max_abs")
    assert out.dtype == np.float64
    assert out.tolist() == [[1.0, -2.0], [3.0, 0.0]]


def test_reduce_channels_rejects_bad_input() -> None:
    with pytest.raises(InvalidArgument) as err:
        reduce_channels(np.zeros((1, 2, 3, 4)))
    assert err.value.field == "attribution"
    with pytest.raises(InvalidArgument) as err:
        reduce_channels(np.zeros((2, 3, 4)), "mean")
    assert "mean" in str(err.value)
    with pytest.raises(InvalidArgument):
        reduce_channels(np.array([[[np.nan]]]))


# --------------------------------------------------------------------------- normalise


def test_normalise_clips_known_outlier() -> None:
    # positive evidence [1, 2, 3, 4, 100]: its 75th percentile is exactly 4 (index 3 of 5).
    a = np.array([[0.0, 1.0, 2.0, 3.0, 4.0, 100.0]])
    out = normalise(a, RenderOptions(clip_percentile=75.0))
    np.testing.assert_allclose(out, [[0.0, 0.25, 0.5, 0.75, 1.0, 1.0]])
    # without clipping the outlier sets the scale and flattens the rest
    out = normalise(a, RenderOptions(clip_percentile=100.0))
    np.testing.assert_allclose(out, [[0.0, 0.01, 0.02, 0.03, 0.04, 1.0]])


def test_normalise_default_percentile_ignores_a_single_hot_pixel() -> None:
    a = np.ones((100, 100))
    a[0, 0] = 1e6
    out = normalise(a, RenderOptions())
    # 99.9th percentile of 9999 ones and one huge value is 1: everything is at full strength.
    assert np.all(out == 1.0)


@pytest.mark.parametrize(
    ("polarity", "expected"),
    [
        ("positive", [0.0, 0.0, 0.0, 1.0]),
        ("negative", [1.0, 0.5, 0.0, 0.0]),
        ("absolute", [1.0, 0.5, 0.0, 0.75]),
        ("both", [-1.0, -0.5, 0.0, 0.75]),
    ],
)
def test_normalise_polarities(polarity: str, expected: list[float]) -> None:
    a = np.array([[-4.0, -2.0, 0.0, 3.0]])
    out = normalise(a, RenderOptions(polarity=polarity, clip_percentile=100.0))
    np.testing.assert_allclose(out, [expected])


def test_normalise_low_percentile_maps_weak_values_to_zero() -> None:
    # positive evidence [1..5]: 25th percentile = 2, 100th = 5 -> (v - 2) / 3
    a = np.array([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    out = normalise(a, RenderOptions(clip_percentile=100.0, clip_percentile_low=25.0))
    np.testing.assert_allclose(out, [[0.0, 0.0, 0.0, 1 / 3, 2 / 3, 1.0]])
    # negative polarity uses the magnitudes of the negative values
    options = RenderOptions(polarity="negative", clip_percentile=100.0, clip_percentile_low=25.0)
    out = normalise(-a, options)
    np.testing.assert_allclose(out, [[0.0, 0.0, 0.0, 1 / 3, 2 / 3, 1.0]])


def test_normalise_low_percentile_in_both_is_a_dead_zone() -> None:
    a = np.array([[-5.0, -1.0, 0.0, 2.0, 3.0, 4.0]])  # |a| evidence [1, 2, 3, 4, 5]; p25 = 2
    options = RenderOptions(polarity="both", clip_percentile=100.0, clip_percentile_low=25.0)
    out = normalise(a, options)
    np.testing.assert_allclose(out, [[-1.0, 0.0, 0.0, 0.0, 1 / 3, 2 / 3]])


@pytest.mark.parametrize("polarity", ["positive", "negative", "absolute", "both"])
def test_normalise_zero_map_gives_zeros(polarity: str) -> None:
    out = normalise(np.zeros((3, 4)), RenderOptions(polarity=polarity))
    assert out.shape == (3, 4)
    assert np.all(out == 0.0) and not np.isnan(out).any()


def test_normalise_no_evidence_of_the_asked_sign_gives_zeros() -> None:
    out = normalise(-np.ones((2, 2)), RenderOptions(polarity="positive"))
    assert np.all(out == 0.0)
    out = normalise(np.ones((2, 2)), RenderOptions(polarity="negative", clip_percentile_low=50.0))
    assert np.all(out == 0.0)


def test_normalise_constant_map() -> None:
    assert np.all(normalise(np.full((2, 3), 7.0), RenderOptions()) == 1.0)
    # a constant map with a low clip too: the window collapses, the evidence stays at full strength
    out = normalise(np.array([[0.0, 7.0, 7.0]]), RenderOptions(clip_percentile_low=10.0))
    assert out.tolist() == [[0.0, 1.0, 1.0]]


def test_normalise_rejects_bad_input() -> None:
    with pytest.raises(InvalidArgument) as err:
        normalise(np.array([[1.0, np.inf]]), RenderOptions())
    assert err.value.field == "attribution"
    with pytest.raises(InvalidArgument):
        normalise(np.zeros((2, 2, 2)), RenderOptions())
    with pytest.raises(InvalidArgument):
        normalise(np.zeros((0, 3)), RenderOptions())
    with pytest.raises(InvalidArgument) as err:
        normalise(np.zeros((2, 2)), RenderOptions(alpha=2.0))
    assert err.value.field == "render.alpha"


# --------------------------------------------------------------------------- RenderOptions


def test_resolved_colormap() -> None:
    assert RenderOptions().resolved_colormap() == "viridis"
    assert RenderOptions(polarity="both").resolved_colormap() == "coolwarm"
    assert RenderOptions(polarity="both", colormap="magma").resolved_colormap() == "magma"
    assert RenderOptions(colormap="jet").resolved_colormap() == "jet"


@pytest.mark.parametrize(
    "options",
    [
        RenderOptions(),
        RenderOptions(colormap="gray", polarity="absolute", overlay="grayscale"),
        RenderOptions(clip_percentile=100.0, clip_percentile_low=0.0, alpha=0.0),
        RenderOptions(clip_percentile=1, clip_percentile_low=0, alpha=1),
    ],
)
def test_validate_accepts_good_options(options: RenderOptions) -> None:
    options.validate()


@pytest.mark.parametrize(
    ("field", "options"),
    [
        ("render.colormap", RenderOptions(colormap="rainbow")),
        ("render.colormap", RenderOptions(colormap="Viridis")),
        ("render.polarity", RenderOptions(polarity="up")),
        ("render.polarity", RenderOptions(polarity="")),
        ("render.overlay", RenderOptions(overlay="blend")),
        ("render.clip_percentile", RenderOptions(clip_percentile=0.0)),
        ("render.clip_percentile", RenderOptions(clip_percentile=100.5)),
        ("render.clip_percentile", RenderOptions(clip_percentile=math.nan)),
        ("render.clip_percentile", RenderOptions(clip_percentile=math.inf)),
        ("render.clip_percentile_low", RenderOptions(clip_percentile_low=-1.0)),
        ("render.clip_percentile_low", RenderOptions(clip_percentile_low=99.9)),
        ("render.clip_percentile_low", RenderOptions(clip_percentile=50, clip_percentile_low=60)),
        ("render.clip_percentile_low", RenderOptions(clip_percentile_low=math.nan)),
        ("render.alpha", RenderOptions(alpha=-0.1)),
        ("render.alpha", RenderOptions(alpha=1.5)),
        ("render.alpha", RenderOptions(alpha=math.nan)),
    ],
)
def test_validate_rejects_each_bad_field(field: str, options: RenderOptions) -> None:
    with pytest.raises(InvalidArgument) as err:
        options.validate()
    assert err.value.field == field
    assert str(err.value).startswith(field + ":")


# --------------------------------------------------------------------------- render_heatmap


def _half_map(h: int = 4, w: int = 8) -> np.ndarray:
    a = np.zeros((h, w))
    a[:, w // 2 :] = 1.0
    return a


def test_render_heatmap_only_half_map_uses_first_and_last_anchor() -> None:
    png = render_heatmap(_half_map(), RenderOptions(overlay="heatmap_only"))
    px = _decode(png)
    assert px.shape == (4, 8, 3)
    assert np.all(px[:, :4] == VIRIDIS_FIRST)
    assert np.all(px[:, 4:] == VIRIDIS_LAST)


@pytest.mark.parametrize("name", ["inferno", "jet", "gray"])
def test_render_heatmap_only_other_colormaps(name: str) -> None:
    anchors = colormap_anchors(name)
    px = _decode(render_heatmap(_half_map(), RenderOptions(colormap=name), image=None))
    assert np.all(px[:, :4] == anchors[0])
    assert np.all(px[:, 4:] == anchors[-1])


def test_render_without_image_uses_size() -> None:
    px = _decode(render_heatmap(_half_map(4, 8), RenderOptions(), size=(12, 16)))
    assert px.shape == (12, 16, 3)
    # bilinear resize keeps the flat regions flat: the outer columns are still pure end colours
    assert np.all(px[:, :6] == VIRIDIS_FIRST)
    assert np.all(px[:, -6:] == VIRIDIS_LAST)


def test_render_resizes_to_image_size() -> None:
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    png = render_heatmap(np.ones((7, 5)), RenderOptions(), image=image)
    with Image.open(io.BytesIO(png)) as im:
        assert im.size == (30, 20)  # PIL reports (width, height)
        assert im.mode == "RGB"


def test_overlay_alpha_zero_returns_image_and_alpha_one_the_heat() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(4, 8, 3), dtype=np.uint8)
    attribution = _half_map()
    px = _decode(render_heatmap(attribution, RenderOptions(alpha=0.0), image=image))
    assert np.array_equal(px, image)
    px = _decode(render_heatmap(attribution, RenderOptions(alpha=1.0), image=image))
    assert np.all(px[:, :4] == VIRIDIS_FIRST) and np.all(px[:, 4:] == VIRIDIS_LAST)


def test_overlay_default_alpha_is_the_rounded_average() -> None:
    image = np.full((4, 8, 3), 200, dtype=np.uint8)
    px = _decode(render_heatmap(_half_map(), RenderOptions(), image=image))
    left = np.floor((np.array(VIRIDIS_FIRST) + 200) / 2 + 0.5).astype(int)
    right = np.floor((np.array(VIRIDIS_LAST) + 200) / 2 + 0.5).astype(int)
    assert left.tolist() == [134, 101, 142]
    assert np.all(px[:, :4] == left) and np.all(px[:, 4:] == right)


def test_overlay_grayscale() -> None:
    image = np.zeros((4, 8, 3), dtype=np.uint8)
    image[..., 0] = 255  # pure red: luma 0.299 * 255 = 76.2 -> 76
    rgb = render_rgb(_half_map(), RenderOptions(overlay="grayscale", alpha=0.0), image=image)
    assert np.all(rgb == 76)
    rgb = render_rgb(_half_map(), RenderOptions(overlay="grayscale", alpha=0.25), image=image)
    expected_left = np.floor(0.75 * 76 + 0.25 * np.array(VIRIDIS_FIRST) + 0.5).astype(int)
    assert np.all(rgb[:, :4] == expected_left)


def test_overlay_on_grey_image() -> None:
    image = np.full((4, 8), 100, dtype=np.uint8)
    rgb = render_rgb(_half_map(), RenderOptions(alpha=0.0), image=image)
    assert rgb.shape == (4, 8, 3) and np.all(rgb == 100)


def test_heatmap_only_ignores_image_pixels_but_takes_its_size() -> None:
    image = np.full((8, 16, 3), 255, dtype=np.uint8)
    px = _decode(render_heatmap(_half_map(), RenderOptions(overlay="heatmap_only"), image=image))
    assert px.shape == (8, 16, 3)
    assert np.all(px[:, :4] == VIRIDIS_FIRST) and np.all(px[:, -4:] == VIRIDIS_LAST)


def test_render_both_polarity_defaults_to_coolwarm() -> None:
    a = np.array([[-2.0, 0.0, 2.0]])
    rgb = render_rgb(a, RenderOptions(polarity="both", clip_percentile=100.0))
    assert rgb[0].tolist() == [list(COOLWARM_BLUE), list(COOLWARM_MID), list(COOLWARM_RED)]


def test_render_both_on_a_sequential_map_puts_zero_in_the_middle() -> None:
    a = np.array([[-2.0, 0.0, 2.0]])
    rgb = render_rgb(a, RenderOptions(polarity="both", colormap="gray", clip_percentile=100.0))
    assert rgb[0, :, 0].tolist() == [0, 128, 255]


def test_render_one_polarity_on_coolwarm_keeps_the_sign_colour() -> None:
    a = np.array([[0.0, 3.0]])
    pos = render_rgb(a, RenderOptions(colormap="coolwarm", clip_percentile=100.0))
    assert pos[0].tolist() == [list(COOLWARM_MID), list(COOLWARM_RED)]
    options = RenderOptions(colormap="coolwarm", polarity="negative", clip_percentile=100.0)
    neg = render_rgb(-a, options)
    assert neg[0].tolist() == [list(COOLWARM_MID), list(COOLWARM_BLUE)]


def test_render_reduces_channels_with_sum_abs() -> None:
    a = np.zeros((3, 4, 8))
    a[0, :, 4:] = -1.0  # negative in one channel: sum_abs makes it evidence
    a[2, :, 4:] = 0.5
    rgb = render_rgb(a, RenderOptions(overlay="heatmap_only", clip_percentile=100.0))
    assert np.all(rgb[:, :4] == VIRIDIS_FIRST) and np.all(rgb[:, 4:] == VIRIDIS_LAST)
    # with a signed reduction, the right half sums to -0.5: no positive evidence at all
    rgb = render_rgb(a, RenderOptions(clip_percentile=100.0), channel_reduction="sum")
    assert np.all(rgb == VIRIDIS_FIRST)


def test_render_png_matches_render_rgb() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5, 7))
    image = rng.integers(0, 256, size=(10, 14, 3), dtype=np.uint8)
    options = RenderOptions(polarity="both", overlay="grayscale", alpha=0.3)
    decoded = _decode(render_heatmap(a, options, image=image))
    assert np.array_equal(decoded, render_rgb(a, options, image=image))
    assert _decode(encode_png(render_rgb(a, options))).shape == (5, 7, 3)


def test_render_rejects_bad_arguments() -> None:
    a = np.zeros((4, 4))
    with pytest.raises(InvalidArgument) as err:
        render_heatmap(a, RenderOptions(), image=np.zeros((4, 4, 3), dtype=np.float32))
    assert err.value.field == "image"
    with pytest.raises(InvalidArgument) as err:
        render_heatmap(a, RenderOptions(), image=np.zeros((4, 4, 4), dtype=np.uint8))
    assert err.value.field == "image"
    with pytest.raises(InvalidArgument) as err:
        render_heatmap(a, RenderOptions(), image=np.zeros((4, 4, 3), dtype=np.uint8), size=(5, 5))
    assert err.value.field == "size"
    with pytest.raises(InvalidArgument) as err:
        render_heatmap(a, RenderOptions(), size=(0, 5))
    assert err.value.field == "size"
    with pytest.raises(InvalidArgument) as err:
        render_heatmap(a, RenderOptions(polarity="sideways"))
    assert err.value.field == "render.polarity"
    with pytest.raises(InvalidArgument) as err:
        render_heatmap(np.full((2, 2), np.nan), RenderOptions())
    assert err.value.field == "attribution"
