import random

import numpy as np
import torch
from PIL import Image

from util import MultiScaleCrop, Warp, get_rng_state, seed_everything, set_rng_state


def test_multiscale_crop_sizes_offsets_and_output():
    crop = MultiScaleCrop(32, scales=(1.0, 0.9, 0.8, 0.7, 0.6), max_distort=2)
    sizes = crop.crop_sizes(200, 100)  # sides 100, 90, 80, 70, 60
    assert len(sizes) == 25 - 6  # scale indices at most 2 apart
    assert (100, 60) not in sizes and (100, 80) in sizes and (60, 80) in sizes
    assert MultiScaleCrop(88).crop_sizes(100, 100)[:1] == [(100, 100)]
    assert MultiScaleCrop(89).crop_sizes(90, 100)[0] == (89, 89)  # within 3 px of the output: snapped
    offsets = crop.offsets(200, 100, 80, 60)  # steps 30, 10
    assert len(set(offsets)) == 13 and (0, 0) in offsets and (120, 40) in offsets and (90, 30) in offsets
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (100, 200, 3), dtype=np.uint8))
    random.seed(0)
    first = [np.asarray(crop(img)) for _ in range(4)]
    assert first[0].shape == (32, 32, 3)
    assert any(not np.array_equal(first[0], f) for f in first[1:])  # random crops differ
    random.seed(0)  # Python's random alone decides the crop
    torch.manual_seed(1)
    np.random.seed(1)
    assert all(np.array_equal(a, np.asarray(crop(img))) for a in first)


def test_warp_ignores_aspect():
    assert Warp(48)(Image.new('RGB', (100, 30))).size == (48, 48)


def test_rng_state_round_trip_through_weights_only_file(tmp_path):
    seed_everything(3)
    state = get_rng_state()
    path = tmp_path / 'rng.pt'
    torch.save({'rng': state}, path)
    first = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(path, weights_only=True)['rng'])
    second = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1]) and first[2] == second[2]
