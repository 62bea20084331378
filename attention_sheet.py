"""The attention pictures: where a label looked in an image, at the model's three depths.

``predict.py --attention``, the evaluation report (report_page.py) and the app (app.py) draw them
here, with Pillow and numpy only. A map is one label's attention over one level's feature
positions (``MSRN.attention_maps``: the softmax over positions averaged over the channels, so it
sums to 1); h, w below are its height and width.

- Colours: each map is stretched from its own lowest weight (blue) to its highest (red) with the
  'jet' colours, blended half and half with the image; the colour bar of :func:`legend` says so.
  A tile's caption gives the map's size and its peak: its highest weight divided by the uniform
  weight 1/(h·w), so 1x means no position stands out.
- A flat map (one position, as level 3 of images under 128 px, or weights all within FLAT of
  its peak) has no spatial information: its tile shows the image in grey with a note instead.
- The model sees every image warped to a square; a picture wider or taller than MAX_ASPECT : 1 is
  shown squeezed to that ratio (the legend says so), so that a 3840x96 image stays readable.
- A row names its label and probability and, when a threshold is given, whether the label is
  predicted (probability >= threshold) or not.
"""
import functools
import importlib.util
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

TILE = 224          # px: the width of each picture of a sheet
MAX_ASPECT = 3.0    # wider or taller pictures are squeezed to this ratio
FLAT = 0.05         # a map whose weights all lie within this fraction of its peak is flat
FONT_SIZE = 13
CAPTION_HEIGHT = 18  # px: the strip above each picture that says what it shows
LEGEND_HEIGHT = 40   # px: the colour bar and notes under a sheet
PAD_COLOUR = (235, 235, 235)
NOT_PREDICTED_COLOUR = (170, 20, 20)


def jet_lut():
    """The 'jet' colour map as a (256, 3) uint8 table: dark blue, blue, cyan, yellow, red, dark red."""
    x = np.linspace(0, 1, 256)[:, None]
    rgb = np.clip(1.5 - np.abs(4 * x - np.array([3.0, 2.0, 1.0])), 0, 1)   # (256, 3) r, g, b
    return (rgb * 255).round().astype(np.uint8)


JET = jet_lut()


@functools.lru_cache(maxsize=None)
def font(size=FONT_SIZE):
    """DejaVu Sans (shipped with matplotlib: accents, Greek, Cyrillic), else Pillow's own font
    (ASCII only: other letters of class names show as boxes)."""
    spec = importlib.util.find_spec('matplotlib')
    for folder in (spec.submodule_search_locations or []) if spec else []:
        try:
            return ImageFont.truetype(os.path.join(folder, 'mpl-data', 'fonts', 'ttf', 'DejaVuSans.ttf'), size)
        except OSError:
            pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:   # Pillow < 10.1: one bitmap size only
        return ImageFont.load_default()


def fitted_size(width, height, tile=TILE, max_aspect=MAX_ASPECT):
    """(tile, h): the size of the picture of a width x height image ``tile`` px wide, its height
    within [tile / max_aspect, tile x max_aspect]; and whether that squeezed it."""
    wanted = tile * height / width
    fitted = min(max(wanted, tile / max_aspect), tile * max_aspect)
    return (tile, max(1, round(fitted))), abs(fitted - wanted) > 1e-6 * wanted


def picture(image, tile=TILE):
    """``image`` (PIL) resized for a sheet (:func:`fitted_size`): (picture, squeezed)."""
    size, squeezed = fitted_size(*image.size, tile)
    return image.convert('RGB').resize(size, Image.BILINEAR), squeezed


@dataclass
class Tile:
    image: Image.Image   # the picture with the map overlaid (or greyed, when flat)
    caption: str         # e.g. 'level 2 14x14 peak 3.1x' or 'level 3 1x1: no map'
    flat: bool


def level_tile(pic, level, heat):
    """The tile of one level: ``pic`` (PIL, RGB) with ``heat`` (h, w), one label's map, overlaid."""
    heat = np.asarray(heat, dtype=np.float32)
    h, w = heat.shape
    top, low = float(heat.max()), float(heat.min())
    if h * w == 1 or not top > 0 or top - low <= FLAT * top:
        grey = ImageOps.grayscale(pic).convert('RGB')
        text = 'one position:\nthe whole image' if h * w == 1 else f'weights within\n{FLAT:.0%} of each other'
        draw = ImageDraw.Draw(grey)
        draw.multiline_text((pic.width / 2, pic.height / 2), text, fill='black', font=font(), anchor='mm',
                            align='center')
        return Tile(grey, f'level {level} {h}x{w}: {"no map" if h * w == 1 else "uniform"}', True)
    stretched = Image.fromarray(heat).resize(pic.size, Image.BILINEAR)   # mode 'F', (height, width)
    values = (np.asarray(stretched) - low) / (top - low)
    colours = Image.fromarray(JET[np.clip(values * 255, 0, 255).astype(np.uint8)])
    return Tile(Image.blend(pic, colours, 0.5), f'level {level} {h}x{w} peak {top * h * w:.3g}x', False)


def level_tiles(pic, label_maps):
    """The tiles of one label at each level; ``label_maps``: its (h, w) map per level."""
    return [level_tile(pic, level, heat) for level, heat in enumerate(label_maps, 1)]


@dataclass
class Row:
    name: str
    probability: float
    threshold: Optional[float] = None   # None: predicted or not is not said

    @property
    def caption(self):
        text = f'{self.name} {self.probability:.2f}'
        if self.threshold is None:
            return text
        if self.probability >= self.threshold:
            return f'{text} >= {self.threshold:.2f}'
        return f'{text} < {self.threshold:.2f}: not predicted'


def legend(width, notes=()):
    """The colour bar and what it means, ``width`` px wide, with ``notes`` (lines) beside it."""
    strip = Image.new('RGB', (width, LEGEND_HEIGHT), 'white')
    bar = Image.fromarray(np.repeat(JET[None], 10, axis=0)).resize((160, 10), Image.NEAREST)
    strip.paste(bar, (4, 6))
    draw = ImageDraw.Draw(strip)
    small = font(11)
    draw.text((4, 18), 'lowest', fill='black', font=small)
    draw.text((164, 18), 'highest', fill='black', font=small, anchor='ra')
    lines = ["each map from its lowest to its highest weight; peak: highest / uniform (1 / positions)",
             *notes]
    draw.multiline_text((176, 2), '\n'.join(lines), fill='black', font=small, spacing=1)
    return strip


def draw_sheet(image, rows, maps, tile=TILE):
    """The attention sheet of one image: one row per label of ``rows`` (``Row`` or (name,
    probability[, threshold])), the picture then its map at each level, and the legend below.
    ``maps``: per level an array or tensor (L, h, w), row i of ``rows`` being maps[level][i]."""
    rows = [r if isinstance(r, Row) else Row(*r) for r in rows]
    maps = [np.asarray(m.float().cpu() if hasattr(m, 'float') else m, dtype=np.float32) for m in maps]
    pic, squeezed = picture(image, tile)
    width, height = pic.size
    columns = 1 + len(maps)
    notes = []
    if squeezed:
        notes.append(f'image {image.width}x{image.height} shown squeezed to {MAX_ASPECT:g}:1 (the model sees it '
                     'warped to a square)')
    sheet = Image.new('RGB', (columns * width, len(rows) * (CAPTION_HEIGHT + height) + LEGEND_HEIGHT), 'white')
    draw = ImageDraw.Draw(sheet)
    caption_font = font()
    for i, row in enumerate(rows):
        top = i * (CAPTION_HEIGHT + height)
        tiles = [Tile(pic, row.caption, False), *level_tiles(pic, [m[i] for m in maps])]
        for column, tile in enumerate(tiles):
            predicted = row.threshold is None or row.probability >= row.threshold
            colour = 'black' if column or predicted else NOT_PREDICTED_COLOUR
            draw.text((column * width + 2, top + 2), tile.caption, fill=colour, font=caption_font)
            sheet.paste(tile.image, (column * width, top + CAPTION_HEIGHT))
    sheet.paste(legend(sheet.width, notes), (0, sheet.height - LEGEND_HEIGHT))
    return sheet


def save_sheet(path, image, rows, maps):
    """:func:`draw_sheet` written as a PNG at ``path`` (its folder made)."""
    sheet = draw_sheet(image, rows, maps)
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    sheet.save(path, compress_level=1)  # fast: these PNGs are photos, which compress little anyway
    return sheet
