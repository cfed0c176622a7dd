"""A slide of real Camelyon size, written tile by tile (`ugafl synth --size`): here at a small size
and with one section, so that it runs in seconds; the layout, pyramid and pixels are what OpenSlide
reads back."""

from __future__ import annotations

import json

import numpy as np
import openslide
import pytest
from click.testing import CliRunner

from ugafl.cli.main import cli
from ugafl.simulations.real_size import SIZES, level_sizes, write_real_size_slide

SIZE = (6000, 12000)  # level-0 px at 0.24 µm/px: 1.44 mm x 2.88 mm, one grid cell


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    path = tmp_path_factory.mktemp("real") / "slide.tif"
    record = write_real_size_slide(path, SIZE, kinds=("itc",), workers=2)
    return path, record


def test_opens_with_its_size_mpp_and_a_pyramid_of_halves(small):
    path, record = small
    with openslide.OpenSlide(path) as slide:
        assert slide.dimensions == SIZE
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.24)
        assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(0.24)
        assert slide.level_dimensions == tuple(level_sizes(SIZE))
        assert slide.level_downsamples == pytest.approx([2.0**k for k in range(slide.level_count)])
    assert record.levels == len(level_sizes(SIZE)) >= 4


def test_tissue_where_the_layout_puts_a_section_and_glass_elsewhere(small):
    path, record = small
    assert json.loads(path.with_name(path.name + ".json").read_text())["placements"][0]["kind"] == "itc"
    (placed,) = record.placements
    with openslide.OpenSlide(path) as slide:
        thumb = np.asarray(slide.get_thumbnail((SIZE[0] // 32, SIZE[1] // 32)).convert("RGB")).astype(int)
    px_um = SIZE[0] * record.mpp / thumb.shape[1]  # µm per thumbnail px
    inside = (slice(int(placed.y_um / px_um), int((placed.y_um + placed.height_um) / px_um)),
              slice(int(placed.x_um / px_um), int((placed.x_um + placed.width_um) / px_um)))
    outside = np.ones(thumb.shape[:2], bool)
    outside[inside] = False
    glass = thumb[outside]
    assert glass.std(axis=0).max() < 1.0  # flat glass around the section
    stained = np.abs(thumb[inside] - glass[0]).max(axis=-1) > 30
    assert stained.mean() > 0.05  # the section is there, stained


def test_levels_agree_with_each_other(small):
    path, _ = small
    with openslide.OpenSlide(path) as slide:
        region = (2000, 4000)
        fine = np.asarray(slide.read_region(region, 0, (1024, 1024)).convert("RGB")).astype(np.float32)
        coarse = np.asarray(slide.read_region(region, 2, (256, 256)).convert("RGB")).astype(np.float32)
    reduced = fine.reshape(256, 4, 256, 4, 3).mean(axis=(1, 3))
    assert np.abs(reduced - coarse).mean() < 8  # the same picture, resampled and JPEG'd separately


def test_sizes_are_real_camelyon_size_and_fractions_of_it():
    assert SIZES["full"] == (100_000, 200_000)
    full = SIZES["full"][0] * SIZES["full"][1]
    assert SIZES["1/4"][0] * SIZES["1/4"][1] * 4 == full
    assert SIZES["1/16"][0] * SIZES["1/16"][1] * 16 == full


def test_cli_refuses_dataset_options_with_size_and_a_file_as_out(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["synth", "--out", str(tmp_path), "--size", "1/16", "--slides-per-centre", "3"])
    assert result.exit_code == 2 and "--slides-per-centre" in result.output
    file = tmp_path / "f"
    file.write_text("x")
    result = runner.invoke(cli, ["synth", "--out", str(file), "--size", "1/16"])
    assert result.exit_code == 2 and "is a file" in result.output
    result = runner.invoke(cli, ["synth", "--out", str(tmp_path), "--size", "1/16", "--centres", "Nowhere"])
    assert result.exit_code == 2 and "unknown centre 'Nowhere'" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]
