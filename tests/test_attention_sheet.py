"""The attention pictures (attention_sheet.py) as a user reads them: a colour scale, flat levels
said, very wide images still readable, labels below their threshold marked."""
import numpy as np
import pytest
from PIL import Image

import attention_sheet as sheet

TILE, CAPTION, LEGEND = sheet.TILE, sheet.CAPTION_HEIGHT, sheet.LEGEND_HEIGHT


def peaked_maps(labels, sizes, seed=0):
    """Per level (labels, h, w) maps that sum to 1, each with one clear peak."""
    rng = np.random.default_rng(seed)
    maps = []
    for h, w in sizes:
        m = rng.random((labels, h, w)).astype(np.float32) + 0.1
        m[:, 0, 0] += 5
        maps.append(m / m.sum((1, 2), keepdims=True))
    return maps


def tile(image, row, column, height):
    """The picture of ``column`` (0: the image, 1-3: the levels) in ``row`` of a sheet, as an array."""
    top = row * (CAPTION + height) + CAPTION
    return np.asarray(image.crop((column * TILE, top, (column + 1) * TILE, top + height)), dtype=np.int16)


def is_grey(pixels):
    return np.abs(pixels - pixels.mean(-1, keepdims=True)).max() <= 1


def test_jet_runs_from_blue_to_red():
    assert tuple(sheet.JET[0]) == (0, 0, 128) and tuple(sheet.JET[-1]) == (128, 0, 0)
    assert sheet.JET[128][1] == 255 and abs(int(sheet.JET[128][0]) - 128) <= 3   # green in the middle


def test_a_sheet_has_a_colour_bar_and_a_flat_level_is_said_not_coloured():
    image = Image.new('RGB', (64, 64), (40, 160, 60))
    maps = peaked_maps(2, [(4, 4), (2, 2), (1, 1)])
    drawn = sheet.draw_sheet(image, [('dog', 0.9, 0.5), ('tree', 0.7, 0.5)], maps)
    assert drawn.size == (4 * TILE, 2 * (CAPTION + TILE) + LEGEND)
    for row in range(2):
        assert not is_grey(tile(drawn, row, 1, TILE)) and not is_grey(tile(drawn, row, 2, TILE))
        assert is_grey(tile(drawn, row, 3, TILE))        # level 3 is 1x1: greyed, not one flat colour
    legend = np.asarray(drawn.crop((0, drawn.height - LEGEND, drawn.width, drawn.height)))
    bar = legend[10, 4:164]                               # the colour bar: jet from blue to red
    assert bar[0, 2] > 100 and bar[0, 0] < 20 and bar[-1, 0] > 100 and bar[-1, 2] < 20
    tiles = sheet.level_tiles(image.resize((TILE, TILE)), [m[0] for m in maps])
    assert [t.flat for t in tiles] == [False, False, True]
    assert tiles[2].caption == 'level 3 1x1: no map' and tiles[0].caption.startswith('level 1 4x4 peak ')
    uniform = sheet.level_tile(image, 1, np.full((4, 4), 1 / 16))
    assert uniform.flat and uniform.caption == 'level 1 4x4: uniform'


def test_the_peak_is_the_highest_weight_over_the_uniform_one():
    heat = np.full((2, 2), 0.2)
    heat[1, 1] = 0.4
    assert sheet.level_tile(Image.new('RGB', (8, 8)), 2, heat).caption == 'level 2 2x2 peak 1.6x'


@pytest.mark.parametrize('size, height', [((3840, 96), round(TILE / sheet.MAX_ASPECT)),
                                          ((96, 3840), round(TILE * sheet.MAX_ASPECT)),
                                          ((400, 300), 168)])
def test_very_wide_or_tall_images_are_squeezed_to_a_readable_size(size, height):
    image = Image.new('RGB', size, (200, 100, 50))
    drawn = sheet.draw_sheet(image, [('a', 0.6)], peaked_maps(1, [(28, 28), (14, 14), (7, 7)]))
    assert drawn.size == (4 * TILE, CAPTION + height + LEGEND)
    squeezed = sheet.fitted_size(*size)[1]
    assert squeezed == (size != (400, 300))


def test_a_label_below_its_threshold_is_marked():
    assert sheet.Row('dog', 0.31, 0.5).caption == 'dog 0.31 < 0.50: not predicted'
    assert sheet.Row('dog', 0.5, 0.5).caption == 'dog 0.50 >= 0.50'
    assert sheet.Row('dog', 0.31).caption == 'dog 0.31'
    image = Image.new('RGB', (64, 64), 'white')
    maps = peaked_maps(2, [(4, 4), (2, 2), (1, 1)])
    drawn = np.asarray(sheet.draw_sheet(image, [('dog', 0.9, 0.5), ('cat', 0.2, 0.5)], maps))
    red = (np.abs(drawn[..., :3].astype(int) - sheet.NOT_PREDICTED_COLOUR).sum(-1) < 60)
    assert not red[:CAPTION, :TILE].any() and red[CAPTION + TILE:2 * CAPTION + TILE, :TILE].any()
