"""Write small, learnable synthetic datasets in the four real layouts and the custom one
(docs/datasets.md, "Your own data"), for tests and a first run.

Class c of C is drawn as one shape with its own look: hue c/C around the colour wheel (odd
classes darker) and one of nine shapes (c mod 9), in a random cell of a 3×3 grid on a noisy grey
background, so a small CNN separates the classes at 64 px. Labels are correlated: an image has
1-3 objects, and the second is class c's partner (c + C/2) mod C with probability 0.7. Apparel
draws one garment shape in its named colour. Everything is deterministic given ``seed``.

Each ``write_*`` returns a dict with the paths a loader needs; with ``with_label_files`` it also
writes ``<root>/<ds>_adj.pkl`` (``tools/build_adj.py`` on the training labels) and
``<root>/<ds>_glove_word2vec.pkl`` (random unit-scale vectors), so nothing is downloaded. The
custom layout needs neither: the demo script makes them.

    python tools/synthetic_data.py voc /tmp/synthetic_voc --image-size 64
    python tools/synthetic_data.py custom /tmp/my_data
"""
import argparse
import colorsys
import csv
import hashlib
import json
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

if __package__ in (None, ''):  # run as a script: make the repo's modules importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import apparel  # noqa: E402
import coco  # noqa: E402
import custom  # noqa: E402
import label_files  # noqa: E402
import nuswide  # noqa: E402
import voc  # noqa: E402

GRID = 3
PARTNER_PROB = 0.7
APPAREL_RGB = {'black': (25, 25, 25), 'blue': (30, 60, 200), 'brown': (120, 70, 30), 'green': (30, 150, 50),
               'red': (210, 30, 30), 'white': (250, 250, 250)}
GARMENT_SHAPE = {'dress': 2, 'pants': 5, 'shirt': 6, 'shoes': 4, 'shorts': 1}
# the custom layout's classes: names with a space and a non-ASCII letter, not in sorted order
CUSTOM_CLASSES = ['traffic light', 'café', 'dog', 'bicycle', 'tree', 'umbrella']
# the 24 folders of the Kaggle apparel dataset
APPAREL_FOLDERS = ['black_dress', 'black_pants', 'black_shirt', 'black_shoes', 'black_shorts', 'blue_dress',
                   'blue_pants', 'blue_shirt', 'blue_shoes', 'blue_shorts', 'brown_pants', 'brown_shoes',
                   'brown_shorts', 'green_pants', 'green_shirt', 'green_shoes', 'green_shorts', 'red_dress',
                   'red_pants', 'red_shoes', 'white_dress', 'white_pants', 'white_shoes', 'white_shorts']


def class_rgb(c, num_classes):
    r, g, b = colorsys.hsv_to_rgb(c / num_classes, 1.0, 1.0 if c % 2 == 0 else 0.55)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_shape(draw, shape, box, rgb):
    """Draw shape 0-8 (disk, square, triangle, diamond, h-bars, v-bars, plus, ring, X) in ``box``."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    t = max(2, int(min(w, h) / 5))  # stroke width
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == 0:
        draw.ellipse(box, fill=rgb)
    elif shape == 1:
        draw.rectangle(box, fill=rgb)
    elif shape == 2:
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=rgb)
    elif shape == 3:
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=rgb)
    elif shape in (4, 5):
        for k in range(3):
            if shape == 4:
                draw.rectangle((x0, y0 + k * h * 2 / 5, x1, y0 + k * h * 2 / 5 + h / 5), fill=rgb)
            else:
                draw.rectangle((x0 + k * w * 2 / 5, y0, x0 + k * w * 2 / 5 + w / 5, y1), fill=rgb)
    elif shape == 6:
        draw.rectangle((cx - t, y0, cx + t, y1), fill=rgb)
        draw.rectangle((x0, cy - t, x1, cy + t), fill=rgb)
    elif shape == 7:
        draw.ellipse(box, outline=rgb, width=t)
    else:
        draw.line((x0, y0, x1, y1), fill=rgb, width=t)
        draw.line((x0, y1, x1, y0), fill=rgb, width=t)


def background(rng, size, low=170, high=230):
    grey = rng.integers(low, high)
    pixels = np.clip(grey + rng.normal(0, 6, (size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def render(rng, objects, num_classes, size):
    """objects: [(class, small)] -> image with each class drawn in its own grid cell."""
    img = background(rng, size)
    draw = ImageDraw.Draw(img)
    cell = size / GRID
    for (c, small), k in zip(objects, rng.permutation(GRID * GRID)):
        side = cell * (rng.uniform(0.35, 0.45) if small else rng.uniform(0.75, 0.95))
        x0 = (k % GRID) * cell + rng.uniform(0, cell - side)
        y0 = (k // GRID) * cell + rng.uniform(0, cell - side)
        draw_shape(draw, c % 9, (x0, y0, x0 + side, y0 + side), class_rgb(c, num_classes))
    return img


def sample_labels(rng, num_classes):
    """1-3 distinct classes; the second is the first one's partner with probability PARTNER_PROB."""
    count = rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2])
    first = int(rng.integers(num_classes))
    labels = [first]
    if count >= 2:
        labels.append((first + num_classes // 2) % num_classes if rng.random() < PARTNER_PROB
                      else int(rng.integers(num_classes)))
    if count == 3:
        labels.append(int(rng.integers(num_classes)))
    return sorted(set(labels))


def save_jpeg(img, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path, quality=90)


def write_label_files(root, dataset, train_targets, seed=0):
    """Write ``<root>/<ds>_adj.pkl`` from the training targets and random word vectors [C, 300]."""
    graph_file = os.path.join(root, f'{dataset}_adj.pkl')
    word_file = os.path.join(root, f'{dataset}_glove_word2vec.pkl')
    label_files.save(graph_file, label_files.build_adjacency(train_targets))
    vectors = np.random.default_rng(seed + 1).normal(size=(train_targets.shape[1], 300)).astype(np.float32)
    label_files.save(word_file, vectors)
    return {'graph_file': graph_file, 'word_file': word_file}


def _finish(root, dataset, train_targets, seed, with_label_files, **info):
    info['root'] = root
    if with_label_files:
        info.update(write_label_files(root, dataset, np.asarray(train_targets), seed))
    return info


def write_voc(root, n_trainval=160, n_test=80, image_size=64, seed=0, with_label_files=True, difficult_prob=0.1):
    """VOC 2007 devkit layout: JPEGImages/<id>.jpg and ImageSets/Main/<class>_<set>.txt (1/-1/0)."""
    rng = np.random.default_rng(seed)
    num_classes = len(voc.CLASSES)
    base = os.path.join(root, 'VOCdevkit', 'VOC2007')
    image_id = 0
    targets = {}
    for split, count in (('trainval', n_trainval), ('test', n_test)):
        rows = []
        for _ in range(count):
            image_id += 1
            labels = sample_labels(rng, num_classes)
            objects = [(c, False) for c in labels]
            target = np.full(num_classes, -1, np.int8)
            target[labels] = 1
            if rng.random() < difficult_prob:  # a small extra object, labelled difficult
                c = int(rng.integers(num_classes))
                if target[c] == -1:
                    objects.append((c, True))
                    target[c] = 0
            name = f'{image_id:06d}'
            save_jpeg(render(rng, objects, num_classes, image_size), os.path.join(base, 'JPEGImages', name + '.jpg'))
            rows.append((name, target))
        main = os.path.join(base, 'ImageSets', 'Main')
        os.makedirs(main, exist_ok=True)
        with open(os.path.join(main, f'{split}.txt'), 'w') as f:
            f.writelines(f'{name}\n' for name, _ in rows)
        for i, cls in enumerate(voc.CLASSES):
            with open(os.path.join(main, f'{cls}_{split}.txt'), 'w') as f:
                f.writelines(f'{name} {int(t[i]):2d}\n' for name, t in rows)
        targets[split] = np.stack([t for _, t in rows])
    return _finish(root, 'voc', targets['trainval'], seed, with_label_files, targets=targets)


def coco_category_id(k):
    """Category id of the k-th class: distinct, unordered and gappy like COCO's, so a loader that
    indexed by id instead of by sorted name would be caught."""
    return 1 + (37 * k) % 97


def write_coco(root, n_train=60, n_val=30, image_size=64, seed=0, with_label_files=True, n_unlabelled=2):
    """COCO 2014 layout: <phase>2014/*.jpg and annotations/instances_<phase>2014.json; each phase also
    lists ``n_unlabelled`` images without annotations (the loader leaves them out)."""
    rng = np.random.default_rng(seed)
    num_classes = len(coco.CLASSES)
    categories = [{'id': coco_category_id(k), 'name': name, 'supercategory': 'thing'}
                  for k, name in enumerate(coco.CLASSES)]
    image_id = ann_id = 0
    targets = {}
    for phase, count in (('train', n_train), ('val', n_val)):
        images, annotations, rows = [], [], []
        for i in range(count + n_unlabelled):
            image_id += 1
            labels = sample_labels(rng, num_classes) if i < count else []
            file_name = f'COCO_{phase}2014_{image_id:012d}.jpg'
            save_jpeg(render(rng, [(c, False) for c in labels], num_classes, image_size),
                      os.path.join(root, f'{phase}2014', file_name))
            images.append({'id': image_id, 'file_name': file_name, 'width': image_size, 'height': image_size})
            for c in labels:
                ann_id += 1
                annotations.append({'id': ann_id, 'image_id': image_id, 'category_id': coco_category_id(c),
                                    'iscrowd': 0, 'bbox': [0, 0, 1, 1], 'area': 1})
            if labels:
                target = np.full(num_classes, -1, np.int8)
                target[labels] = 1
                rows.append(target)
        path = os.path.join(root, 'annotations', f'instances_{phase}2014.json')
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'w') as f:
            json.dump({'images': images, 'annotations': annotations, 'categories': categories}, f)
        targets[phase] = np.stack(rows)
    return _finish(root, 'coco', targets['train'], seed, with_label_files, targets=targets)


def write_nuswide(root, n_train=60, n_val=30, image_size=64, seed=0, with_label_files=True, empty_prob=0.05):
    """ASL NUS-WIDE layout: <root>/nus_wid_data.csv (filepath,label,split_name) and images/*.jpg;
    rows of both splits are interleaved and some have no label (``[]``)."""
    rng = np.random.default_rng(seed)
    num_classes = len(nuswide.CLASSES)
    splits = rng.permutation(['train'] * n_train + ['val'] * n_val)
    rows, targets = [], {'train': [], 'val': []}
    for i, split in enumerate(splits):
        labels = [] if rng.random() < empty_prob else sample_labels(rng, num_classes)
        path = f'images/{i:04d}_{split}.jpg'
        save_jpeg(render(rng, [(c, False) for c in labels], num_classes, image_size), os.path.join(root, path))
        rows.append([path, str([nuswide.CLASSES[c] for c in labels]), split])
        target = np.full(num_classes, -1, np.int8)
        target[labels] = 1
        targets[split].append(target)
    with open(os.path.join(root, nuswide.CSV_NAME), 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['filepath', 'label', 'split_name'])
        writer.writerows(rows)
    targets = {k: np.stack(v) for k, v in targets.items()}
    return _finish(root, 'nuswide', targets['train'], seed, with_label_files, targets=targets)


def write_apparel(root, n_per_folder=4, image_size=64, seed=0, with_label_files=True, layout='folders'):
    """Apparel: one garment in its colour per image, in the Kaggle ``<colour>_<garment>/`` folders,
    or (``layout='official'``) all in ``<root>/apparel/`` plus ``<root>/image_label.pkl`` (0 = present).
    The graph file counts all images: the split is the loader's business."""
    rng = np.random.default_rng(seed)
    image_label = {}
    for folder in APPAREL_FOLDERS:
        colour, garment = folder.split('_')
        # sorted within a folder, as the official image_label.pkl was written
        for name in sorted(hashlib.sha1(f'{seed}/{folder}/{i}'.encode()).hexdigest() + '.jpg'
                           for i in range(n_per_folder)):
            img = background(rng, image_size, 120, 190)
            side = image_size * rng.uniform(0.45, 0.7)
            x0, y0 = rng.uniform(0, image_size - side, 2)
            draw_shape(ImageDraw.Draw(img), GARMENT_SHAPE[garment], (x0, y0, x0 + side, y0 + side), APPAREL_RGB[colour])
            save_jpeg(img, os.path.join(root, folder if layout == 'folders' else 'apparel', name))
            image_label[name] = [0 if c in (colour, garment) else -1 for c in apparel.CLASSES]
    info = {}
    if layout == 'official':
        info['image_label'] = os.path.join(root, 'image_label.pkl')
        label_files.save(info['image_label'], image_label)
    train_targets = np.where(np.array(list(image_label.values())) == 0, 1, -1)
    return _finish(root, 'apparel', train_targets, seed, with_label_files, **info)


def write_custom(root, n_train=60, n_val=30, image_size=64, seed=0, classes=CUSTOM_CLASSES, empty_prob=0.05,
                 classes_txt=False, n_test=0):
    """The custom layout: ``train.csv`` and ``val.csv`` (``filepath,labels``, labels joined by ``|``,
    some empty) listing ``images/<split>/<n>.jpg``, and ``test.csv`` when ``n_test`` (written last:
    the other splits stay the same); with ``classes_txt`` also ``classes.txt`` in
    the order of ``classes``. Targets are in that order too (the loader's order without
    ``classes.txt`` is the sorted one: ``info['sorted_classes']``)."""
    rng = np.random.default_rng(seed)
    num_classes = len(classes)
    os.makedirs(root, exist_ok=True)
    targets = {}
    for split, count in (('train', n_train), ('val', n_val), ('test', n_test)):
        if not count:
            continue
        rows, split_targets = [], []
        for i in range(count):
            labels = [] if rng.random() < empty_prob else sample_labels(rng, num_classes)
            path = f'images/{split}/{i:04d}.jpg'
            save_jpeg(render(rng, [(c, False) for c in labels], num_classes, image_size), os.path.join(root, path))
            rows.append([path, custom.SEPARATOR.join(classes[c] for c in labels)])
            target = np.full(num_classes, -1, np.int8)
            target[labels] = 1
            split_targets.append(target)
        with open(os.path.join(root, f'{split}.csv'), 'w', newline='', encoding='utf-8') as f:
            writer = csv.writer(f)
            writer.writerow(custom.HEADER)
            writer.writerows(rows)
        targets[split] = np.stack(split_targets)
    if classes_txt:
        with open(os.path.join(root, custom.CLASSES_NAME), 'w', encoding='utf-8') as f:
            f.writelines(f'{name}\n' for name in classes)
    return {'root': root, 'classes': list(classes), 'sorted_classes': sorted(classes), 'targets': targets}


WRITERS = {'voc': write_voc, 'coco': write_coco, 'nuswide': write_nuswide, 'apparel': write_apparel,
           'custom': write_custom}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('dataset', choices=sorted(WRITERS), help='layout to write')
    parser.add_argument('root', help='folder to write it to')
    parser.add_argument('--image-size', type=int, default=64, help='image side in pixels')
    parser.add_argument('--seed', type=int, default=0, help='random seed')
    args = parser.parse_args(argv)
    info = WRITERS[args.dataset](args.root, image_size=args.image_size, seed=args.seed)
    print('\n'.join(f'{k}: {v}' for k, v in info.items() if k != 'targets'))


if __name__ == '__main__':
    main()
