"""The command line shared by the demo scripts: one parser, the builders, and the run.

Each ``demo_*_gcn.py`` only passes its ``DATASET`` dict (loader, splits, defaults) to ``main``.
Defaults that are paths (graph and word files, save folder, ImageNet weights) resolve against the
repository, so the scripts run from any working directory; paths you pass resolve as usual.
"""
import argparse
import os
import sys

import torch.nn as nn

import distributed
import label_files
from engine import build_engine, build_optimizer, init_run
from errors import DatasetError
from models import RESNET_LAYOUTS, MSRN, default_pretrained_path, load_imagenet_trunk

REPO_DIR = os.path.dirname(os.path.abspath(__file__))
PICKLE_WARNING = 'pickles can run code when loaded: pass only files you trust (.npy/.npz also accepted)'


def get_args_parser(dataset):
    """The official flags (same spellings and defaults) plus ours, grouped; ``dataset`` is a DATASET dict."""
    parser = argparse.ArgumentParser(
        description=f"Train or evaluate MSRN on {dataset['title']}.",
        epilog='Several GPUs: torchrun --nproc_per_node N %(prog)s ... (see README).')
    data = parser.add_argument_group('data')
    data.add_argument('data', metavar='DIR', help=f"dataset folder ({dataset['layout']})")
    data.add_argument('--image-size', '-i', default=224, type=int, metavar='N',
                      help='image side in pixels (default: 224; the paper and the released models use 448)')
    data.add_argument('-j', '--workers', default=4, type=int, metavar='N', help='data loading processes (default: 4)')
    files = label_file_defaults(dataset)
    data.add_argument('-graph_file', '--graph-file', default=files['graph_file'][0], metavar='PATH',
                      help=f"label co-occurrence graph {{adj, nums}} (default: {files['graph_file'][1]}); "
                           f"{PICKLE_WARNING}")
    data.add_argument('-word_file', '--word-file', default=files['word_file'][0], metavar='PATH',
                      help=f"label word vectors [classes, 300], or a GloVe text file (a class gets the mean of "
                           f"its words' vectors) (default: {files['word_file'][1]}); {PICKLE_WARNING}")
    for flags, options in dataset.get('flags', {}).items():
        data.add_argument(*flags, **options)
    data.add_argument('--no-download', dest='download', action='store_false',
                      help='never download: a missing dataset or data file is an error')
    data.add_argument('--skip-corrupt', action='store_true',
                      help='leave unreadable images out (their count is printed) instead of stopping')

    model = parser.add_argument_group('model')
    model.add_argument('--pool_ratio', '-po', default=dataset['pool_ratio'], type=float, metavar='O',
                       help=f"label groups K = int(pool_ratio x classes) (default: {dataset['pool_ratio']})")
    model.add_argument('--backbone', '-bb', default='resnet101', choices=list(RESNET_LAYOUTS), metavar='B',
                       help=f"trunk: {', '.join(RESNET_LAYOUTS)} (default: resnet101, the released models')")
    model.add_argument('--pretrained', dest='pretrained', default=1, type=int, metavar='0|1',
                       help='start the trunk from ImageNet weights (default: 1)')
    model.add_argument('-pm', '--pretrain_model', default=None, metavar='PATH',
                       help='ImageNet weights of the trunk (default: pretrained/<backbone>.pth.tar, '
                            'downloaded from download.pytorch.org when missing)')

    train = parser.add_argument_group('training')
    train.add_argument('--epochs', default=20, type=int, metavar='N', help='train until this epoch (default: 20)')
    train.add_argument('--epoch_step', default=[30], type=int, nargs='+', metavar='E',
                       help='epochs at which the lr is multiplied by 0.1 (default: 30)')
    train.add_argument('--start-epoch', default=0, type=int, metavar='N',
                       help='first epoch when not resuming; also places the lr schedule (default: 0)')
    train.add_argument('-b', '--batch-size', default=16, type=int, metavar='N',
                       help='images per batch and process (default: 16)')
    train.add_argument('--lr', '--learning-rate', default=0.1, type=float, metavar='LR',
                       help='learning rate of the head; the trunk gets lr x 0.1 (default: 0.1)')
    train.add_argument('--momentum', default=0.9, type=float, metavar='M', help='SGD momentum (default: 0.9)')
    train.add_argument('--weight-decay', '--wd', default=1e-4, type=float, metavar='W',
                       help='weight decay (default: 1e-4)')
    train.add_argument('--clip-grad-norm', default=0.0, type=float, metavar='NORM',
                       help='clip the gradient norm to NORM after unscaling; 0 = off (default, as published)')
    train.add_argument('--print-freq', '-p', default=0, type=int, metavar='N',
                       help='print a line every N batches; 0 = progress bar only (default: 0)')

    run = parser.add_argument_group('checkpoints and evaluation')
    run.add_argument('--resume', default='', metavar='PATH',
                     help='checkpoint to continue from (ours or a released one); missing = error')
    run.add_argument('-e', '--evaluate', dest='evaluate', action='store_true',
                     help='evaluate the model on the test split and exit (use with --resume)')
    run.add_argument('--save-dir', default=os.path.join(REPO_DIR, dataset['save_dir']), metavar='DIR',
                     help=f"checkpoints, logs, eval JSON and curves (default: {dataset['save_dir']} in the repo)")

    system = parser.add_argument_group('system')
    system.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'],
                        help='auto: CUDA when available (default)')
    system.add_argument('--seed', default=None, type=int, metavar='S',
                        help='seed every generator (+ rank); with -j 0 a CPU run repeats bit for bit')
    return parser


def label_file_defaults(dataset):
    """{'graph_file' / 'word_file': (default, its description)}: the official files of the dataset,
    unless its DATASET dict names others in 'label_files' (None: made from the data, see build_model)."""
    name = dataset['name']
    return {'graph_file': (label_files.default_file(name, 'graph'),
                           f'data/{name}/{name}_adj.pkl, downloaded and checked when missing'),
            'word_file': (label_files.default_file(name, 'word'),
                          f'data/{name}/{name}_glove_word2vec.pkl, downloaded and checked when missing'),
            **dataset.get('label_files', {})}


def build_datasets(args, dataset):
    """(train, test) datasets of the DATASET dict from the parsed arguments."""
    options = dict(inp_name=args.word_file, download=args.download, skip_corrupt=args.skip_corrupt,
                   **{key: getattr(args, key) for key in dataset.get('loader_args', ())})
    return tuple(dataset['loader'](args.data, split, **options) for split in dataset['splits'])


def build_model(args, train_set, dataset):
    """MSRN with the graph of ``-graph_file``, or without one the graph that the DATASET's
    'build_graph' makes from ``train_set``; ImageNet trunk weights unless resuming or --pretrained 0."""
    num_classes = train_set.num_classes
    if args.graph_file is None:
        graph = dataset['build_graph'](train_set, args.save_dir)
    else:
        graph = label_files.load_adjacency(args.graph_file, num_classes, download=args.download)
    model = MSRN(num_classes, args.pool_ratio, args.backbone, graph)
    if args.pretrained and not args.resume:
        path = args.pretrain_model or default_pretrained_path(args.backbone)
        print(f'=> ImageNet weights of the trunk from {path}')
        load_imagenet_trunk(model, path, args.backbone)
    return model


def run(args, dataset):
    """Build everything and train or evaluate; returns the best (or evaluated) mAP."""
    device = init_run(args)
    train_set, test_set = build_datasets(args, dataset)
    model = build_model(args, train_set, dataset)
    engine = build_engine(args, device=device, class_names=train_set.classes)
    try:
        return engine.learning(model, nn.MultiLabelSoftMarginLoss(), train_set, test_set,
                               build_optimizer(args, model))
    finally:
        distributed.cleanup()


def main(dataset, argv=None):
    """Entry point of a demo script: parse and run; returns the exit code."""
    return guarded(run, get_args_parser(dataset).parse_args(argv), dataset)


def guarded(action, *args):
    """Run ``action(*args)``; bad input becomes one line on stderr and exit code 2 (no traceback)."""
    try:
        action(*args)
        return 0
    except DatasetError as e:
        message = e.line
    except (ValueError, RuntimeError) as e:  # CheckpointError, NonFinite*Error, no CUDA, bad shapes
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130
    print(f'error: {message}', file=sys.stderr, flush=True)
    return 2
