"""The command line, in one place: the parsers of the entry scripts (the demo scripts, predict.py
and export.py), the dataset description a demo script passes, the settings a checkpoint brings, the
builders that turn arguments into datasets, model, optimizer, loss and engine, and the run.

Modules that read the parsed arguments: cli.py, predict.py, export.py and app.py.

Every other module takes explicit keyword arguments (the scripts under tools/ and bench/ have
small parsers of their own).

Each ``demo_*_gcn.py`` only passes its ``DatasetSpec`` to ``main``. Defaults that are paths (graph
and word files, save folder, ImageNet weights) resolve against the repository, so the scripts run
from any working directory.
"""
import argparse
import os
import re
import subprocess
import sys
import traceback
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch

# before torchvision (engine), whose import probes Triton: attention.py makes a broken one look absent
from attention import ATTENTIONS  # noqa: I001
import checkpoint as ckpt
import distributed
import label_files
import metrics
import run_folder
from engine import GCNMultiLabelMAPEngine
from errors import CheckpointError, MSRNError, UsageError
from losses import LOSSES, build_loss
from models import MSRN, RESNET_LAYOUTS
from util import seed_everything

REPO_DIR = os.path.dirname(os.path.abspath(__file__))
PICKLE_WARNING = 'pickles can run code when loaded: pass only files you trust (.npy/.npz also accepted)'
# Settings of a run that a checkpoint of ours restores when the command line does not give them;
# the others (what to do now, on which machine) are never taken from a checkpoint.
NOT_RESTORED = {'resume', 'evaluate', 'finetune', 'start_epoch', 'device', 'workers', 'download', 'skip_corrupt',
                'print_freq', 'progress', 'pretrained', 'pretrain_model', 'graph_file', 'word_file', 'save_dir',
                'overwrite', 'tensorboard', 'attention', 'channels_last', 'compile', 'split', 'calibrate',
                'thresholds'}
MODEL_SETTINGS = ('backbone', 'pool_ratio', 'image_size')  # what predict.py restores
AMP_DTYPES = {'float16': torch.float16, 'bfloat16': torch.bfloat16}
RELEASED_IMAGE_SIZE = 448  # the released models were trained and evaluated at 448 px
OPTIMIZER_GROUPS = ('trunk', 'head')  # build_optimizer's parameter groups in order (MSRN.get_config_optim)


@dataclass(frozen=True)
class DatasetSpec:
    """What a demo script says about its dataset; everything else is the loader's business."""
    name: str              # short name: official files under data/<name>/, messages
    title: str             # the dataset's name in --help
    layout: str            # what the DIR argument holds, for --help
    loader: Callable       # loader(root, split, inp_name=, download=, skip_corrupt=[, classes=][, loader flags])
    splits: tuple          # (training split, evaluated split), as the loader names them
    pool_ratio: float      # default --pool_ratio (label groups K = int(pool_ratio x classes))
    save_dir: str          # default --save-dir, relative to the repository
    classes: Optional[Sequence[str]] = None  # the fixed class names; None: they come from the data
    image_size: int = 224  # default --image-size (the official script's)
    workers: int = 4       # the official script's -j (capped at the CPU count)
    loader_flags: tuple = ()  # the extra loader flags this dataset takes (keys of LOADER_FLAGS)
    # a dataset without official label files: builds the label graph from its training split,
    # build_graph(train_set, save_dir) -> {'adj', 'nums'}, and its word vectors fall back
    build_graph: Optional[Callable] = None


# ---- the parser ---------------------------------------------------------------------------------

class ArgumentParser(argparse.ArgumentParser):
    """argparse where ``--epoch_step 30 40 DIR`` takes the integers only, leaving DIR positional."""

    def parse_known_args(self, args=None, namespace=None):
        return super().parse_known_args(_join_epoch_steps(sys.argv[1:] if args is None else list(args)), namespace)


def _join_epoch_steps(argv):
    """``--epoch_step 30 40`` -> ``--epoch_step=30,40``: the integers after the flag, nothing more."""
    out, i = [], 0
    while i < len(argv):
        out.append(argv[i])
        if argv[i] in ('--epoch_step', '--epoch-step'):
            j = i + 1
            while j < len(argv) and re.fullmatch(r'\d+', argv[j]):
                j += 1
            if j > i + 1:
                out[-1] = f'{argv[i]}={",".join(argv[i + 1:j])}'
                i = j - 1
        i += 1
    return out


def _epoch_list(text):
    try:
        return [int(step) for step in text.split(',')]
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected epochs such as 30 or 30,40, not {text!r}') from None


def _objective(text):
    try:
        return metrics.objective_text(metrics.parse_objective(text))
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_model_arguments(group, pool_ratio=None):
    """--pool_ratio and --backbone; ``pool_ratio`` None: the dataset's (predict.py)."""
    shown = pool_ratio if pool_ratio is not None else "the dataset script's"
    group.add_argument('--pool_ratio', '-po', default=pool_ratio, type=float, metavar='O',
                       help=f"label groups K = int(pool_ratio x classes) (default: the checkpoint's, else {shown})")
    group.add_argument('--backbone', '-bb', default='resnet101', choices=list(RESNET_LAYOUTS), metavar='B',
                       help=f"trunk: {', '.join(RESNET_LAYOUTS)} (default: the checkpoint's, else resnet101)")


def add_label_file_arguments(group, dataset=None):
    """-graph_file, -word_file and --no-download, with the defaults of ``dataset`` (a DatasetSpec;
    None: no default file, e.g. predict.py, which takes the checkpoint's)."""
    if dataset is None:
        graph, words = (None, "the dataset's file under data/"), (None, "the dataset's file under data/")
    elif dataset.build_graph is not None:
        graph = (None, 'built from the training labels and saved as label_graph.npz in --save-dir')
        words = (None, 'a fixed random unit vector per class, seeded by its name')
    else:
        official = 'downloaded and checked when missing'
        graph = (label_files.default_file(dataset.name, 'graph'),
                 f'data/{dataset.name}/{dataset.name}_adj.pkl, {official}')
        words = (label_files.default_file(dataset.name, 'word'),
                 f'data/{dataset.name}/{dataset.name}_glove_word2vec.pkl, {official}')
    group.add_argument('-graph_file', '--graph-file', default=graph[0], metavar='PATH',
                       help=f"label co-occurrence graph {{adj, nums}} (default: the checkpoint's, else "
                            f"{graph[1]}); {PICKLE_WARNING}")
    group.add_argument('-word_file', '--word-file', default=words[0], metavar='PATH',
                       help=f"label word vectors [classes, 300], or a GloVe text file (a class gets the mean of "
                            f"its words' vectors) (default: the checkpoint's, else {words[1]}); {PICKLE_WARNING}")
    group.add_argument('--no-download', dest='download', action='store_false',
                       help='never download: a missing dataset or data file is an error')


LOADER_FLAGS = {  # flags of some loaders only: a DatasetSpec's loader_flags names them
    'image_label': (('--image-label',), dict(default=None, metavar='PATH', help=(
        'official one-folder layout: the official image_label.pkl (e.g. data/apparel/image_label.pkl); '
        'pickles can run code when loaded: pass only files you trust'))),
}


def add_device_argument(group):
    group.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'],
                       help='auto: CUDA when available (default)')


def get_args_parser(dataset):
    """The official flags (same spellings and defaults as the official script) plus ours, grouped."""
    parser = ArgumentParser(
        description=f'Train or evaluate MSRN on {dataset.title}.',
        epilog='Several GPUs: torchrun --nproc_per_node N %(prog)s ... (see docs/training.md).')
    data = parser.add_argument_group('data')
    data.add_argument('data', metavar='DIR', nargs='?', default=None,
                      help=f"dataset folder ({dataset.layout}); with --resume, default: the checkpoint's")
    size = dataset.image_size
    data.add_argument('--image-size', '-i', default=size, type=int, metavar='N',
                      help=f'image side in pixels (default: {size}, as the official script; the paper used 448)')
    workers = min(dataset.workers, os.cpu_count() or 1)
    data.add_argument('-j', '--workers', default=workers, type=int, metavar='N',
                      help=f'data loading processes (default: {workers}: the official {dataset.workers}, '
                           'at most the CPU count)')
    add_label_file_arguments(data, dataset)
    for name in dataset.loader_flags:
        flags, options = LOADER_FLAGS[name]
        data.add_argument(*flags, **options)
    data.add_argument('--skip-corrupt', action='store_true',
                      help='leave unreadable images out (their count is printed) instead of stopping')

    model = parser.add_argument_group('model')
    add_model_arguments(model, dataset.pool_ratio)
    model.add_argument('--pretrained', dest='pretrained', default=1, type=int, metavar='0|1',
                       help='start the trunk from ImageNet weights (default: 1)')
    model.add_argument('-pm', '--pretrain_model', default=None, metavar='PATH',
                       help='ImageNet weights of the trunk (default: pretrained/<backbone>.pth.tar, '
                            'downloaded from download.pytorch.org when missing)')
    model.add_argument('--finetune', default=None, metavar='PATH',
                       help='start a new run from another MSRN checkpoint: every weight whose name and shape '
                            'fit is loaded, the rest (e.g. the classifier for other classes) starts fresh')

    train = parser.add_argument_group('training')
    train.add_argument('--epochs', default=200, type=int, metavar='N',
                       help='train until this epoch (default: 200, what the official loop ran)')
    train.add_argument('--epoch_step', '--epoch-step', default=[30], type=_epoch_list, metavar='E [E ...]',
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
    train.add_argument('--amp', default=None, action=argparse.BooleanOptionalAction,
                       help='mixed precision: autocast in --amp-dtype (default: on with CUDA, as official)')
    train.add_argument('--amp-dtype', default='float16', choices=list(AMP_DTYPES),
                       help='float16 (default, as official; with gradient scaling; CUDA only) or bfloat16 (no '
                            'scaling needed; Ampere and later GPUs, and the CPU); giving it turns --amp on')
    train.add_argument('--sync-bn', action='store_true',
                       help='under torchrun, BatchNorm statistics over all processes (N x -b, as on one GPU)')
    train.add_argument('--loss', default='multilabel-soft-margin', choices=LOSSES,
                       help='classification loss (default: multilabel-soft-margin, the official one); '
                            'asl: the asymmetric loss; MSRN\'s group loss is added to either')
    train.add_argument('--asl-gamma-neg', default=4.0, type=float, metavar='G',
                       help='asl: focusing of negatives (default: 4)')
    train.add_argument('--asl-gamma-pos', default=0.0, type=float, metavar='G',
                       help='asl: focusing of positives (default: 0)')
    train.add_argument('--asl-clip', default=0.05, type=float, metavar='M',
                       help='asl: probability shift of negatives (default: 0.05)')
    train.add_argument('--ema-decay', default=0.0, type=float, metavar='D',
                       help='also keep an exponential moving average of the weights with this decay (e.g. '
                            '0.9997) and validate it; 0 = off (default, as published)')
    train.add_argument('--print-freq', '-p', default=0, type=int, metavar='N',
                       help='print a line every N batches; 0 = progress bar only (default: 0)')
    train.add_argument('--progress', default=None, action=argparse.BooleanOptionalAction,
                       help='progress bars (default: only when stderr is a terminal)')

    run_group = parser.add_argument_group('checkpoints and evaluation')
    run_group.add_argument('--resume', default='', metavar='PATH',
                           help='checkpoint to continue from (ours or a released one); missing = error. Settings '
                                'not given on the command line are taken from it')
    run_group.add_argument('-e', '--evaluate', dest='evaluate', action='store_true',
                           help='evaluate the model on the test split and exit (use with --resume); '
                                'nothing of the training split is read')
    run_group.add_argument('--split', default=None, metavar='NAME',
                           help=f'with -e: the split to evaluate (default: {dataset.splits[1]}; your own data may '
                                'add test.csv)')
    run_group.add_argument('--calibrate', default=None, type=_objective, metavar='f1|precision=P',
                           help='with -e: choose a probability threshold per class on the evaluated split, for its '
                                'best F1 or the lowest reaching precision P, and write thresholds.json beside the '
                                'eval JSON')
    run_group.add_argument('--thresholds', default=None, metavar='FILE',
                           help='with -e: also measure OP ... CF1 with these per-class thresholds (a thresholds.json '
                                'calibrated on another split)')
    own_data = '/<DIR\'s name>' if dataset.classes is None else ''
    run_group.add_argument('--save-dir', default=os.path.join(REPO_DIR, dataset.save_dir), metavar='DIR',
                           help=f'checkpoints, logs, eval JSON, curves and TensorBoard events (default: the folder '
                                f'of the --resume file, else {dataset.save_dir}{own_data} in the repo)')
    run_group.add_argument('--overwrite', action='store_true',
                           help='a new run whose --save-dir holds another run: delete that run\'s files first '
                                '(default: stop with an error)')
    run_group.add_argument('--no-tensorboard', dest='tensorboard', action='store_false',
                           help='write no TensorBoard events into the save folder (default: write them while '
                                'training; view with tensorboard --logdir DIR)')

    system = parser.add_argument_group('system')
    add_device_argument(system)
    add_speed_arguments(system)
    system.add_argument('--seed', default=None, type=int, metavar='S',
                        help='seed every generator (+ rank); with -j 0 a CPU run repeats bit for bit')
    return parser


def add_speed_arguments(group):
    """How the model runs on this machine (same results up to float rounding); never taken from a checkpoint."""
    group.add_argument('--attention', default='auto', choices=list(ATTENTIONS),
                       help='label attention: auto (default: fused Triton kernels on CUDA once they pass a check, '
                            'chunked PyTorch otherwise), fused (the kernels or an error), chunked, or plain (the '
                            'official formula: much more memory)')
    group.add_argument('--channels-last', action='store_true',
                       help='the trunk and the images in channels-last memory format (faster convolutions on '
                            'recent GPUs)')
    group.add_argument('--compile', action='store_true',
                       help='torch.compile the trunk (the first batches compile; if compiling fails, a warning '
                            'and eager mode)')


def get_predict_parser():
    """predict.py's flags."""
    parser = ArgumentParser(description='MSRN on your own images: labels for image files, folders or lists of '
                                        'paths, printed or written to a CSV file.')
    parser.add_argument('paths', nargs='+', metavar='PATH',
                        help='an image, a folder (searched recursively), or @LIST: a text file with one image path '
                             'per line (relative to its folder)')
    parser.add_argument('--resume', required=True, metavar='CKPT', help='checkpoint (ours or a released one)')
    parser.add_argument('--out', metavar='FILE.csv',
                        help='write filepath,labels,<one probability per class> per image (labels separated by |, '
                             'the format of train.csv) instead of printing the top labels')
    parser.add_argument('--threshold', default=0.5, type=float, metavar='P',
                        help='a label is predicted when its probability is >= P (default: 0.5, the logit-0 rule)')
    parser.add_argument('--thresholds', metavar='FILE',
                        help='per-class probability thresholds (thresholds.json of -e --calibrate) instead of '
                             '--threshold')
    parser.add_argument('--top-k', default=5, type=int, metavar='K',
                        help='print at most K labels per image (default: 5; the CSV has them all)')
    parser.add_argument('--attention', metavar='DIR',
                        help='write each image\'s attention maps as a PNG under DIR, mirroring the input paths')
    add_trained_model_arguments(parser)
    parser.add_argument('-b', '--batch-size', default=16, type=int, metavar='N', help='images per batch (default: 16)')
    workers = min(4, os.cpu_count() or 1)
    parser.add_argument('-j', '--workers', default=workers, type=int, metavar='N',
                        help=f'image loading processes (default: {workers})')
    parser.add_argument('--amp', default=None, action=argparse.BooleanOptionalAction,
                        help='mixed precision in --amp-dtype (default: on with CUDA, as in training)')
    parser.add_argument('--amp-dtype', default='float16', choices=list(AMP_DTYPES),
                        help='float16 (default; CUDA only) or bfloat16; giving it turns --amp on')
    parser.add_argument('--progress', default=None, action=argparse.BooleanOptionalAction,
                        help='progress bar (default: only when stderr is a terminal)')
    add_device_argument(parser)
    return parser


def get_export_parser():
    """export.py's flags."""
    from export import DEFAULT_OPSET
    parser = ArgumentParser(description='MSRN as an ONNX model: images in, logits out, for inference without this '
                                        'repository.')
    parser.add_argument('--resume', required=True, metavar='CKPT', help='checkpoint (ours or a released one)')
    parser.add_argument('--onnx', required=True, metavar='PATH', help='ONNX file to write')
    add_trained_model_arguments(parser)
    parser.add_argument('--opset', default=DEFAULT_OPSET, type=int, metavar='V',
                        help=f'ONNX opset version (default: {DEFAULT_OPSET})')
    add_device_argument(parser)
    return parser


def add_trained_model_arguments(parser):
    """What a trained model needs besides its checkpoint (predict.py, export.py): a released
    checkpoint's dataset, the image size, the model and label-file flags (default: the checkpoint's)."""
    parser.add_argument('--dataset', default=None, choices=list(released_datasets()),
                        help="a released checkpoint's dataset (default: recognised by its class count)")
    parser.add_argument('--image-size', '-i', default=RELEASED_IMAGE_SIZE, type=int, metavar='N',
                        help=f"image side the model sees (default: the checkpoint's, else {RELEASED_IMAGE_SIZE})")
    add_model_arguments(parser)
    add_label_file_arguments(parser)


def released_datasets():
    """{name: DatasetSpec} of the datasets with released checkpoints (the demo scripts import this
    module, so it imports them when asked)."""
    import demo_apparel_gcn
    import demo_coco_gcn
    import demo_nuswide_gcn
    import demo_voc2007_gcn
    return {demo.DATASET.name: demo.DATASET for demo in (demo_voc2007_gcn, demo_coco_gcn, demo_nuswide_gcn,
                                                         demo_apparel_gcn)}


def parse_args(parser, argv=None):
    """(args, given): the parsed arguments, and the names of those given on the command line."""
    args = parser.parse_args(argv)
    actions = [a for a in parser._actions if a.dest != 'help']
    defaults = [a.default for a in actions]
    try:  # parse once more with every default suppressed: what remains was given
        for action in actions:
            action.default = argparse.SUPPRESS
        given = set(vars(parser.parse_args(argv)))
    finally:
        for action, default in zip(actions, defaults):
            action.default = default
    return args, given


# ---- settings from a checkpoint -----------------------------------------------------------------

def restore_settings(args, given, stored, keys=None):
    """Take the settings ``stored`` in a checkpoint (its 'args') that the command line did not give;
    print one line per given flag that differs from the checkpoint, one line for what was taken."""
    taken = []
    for key, value in stored.items():
        if key in NOT_RESTORED or not hasattr(args, key) or (keys is not None and key not in keys):
            continue
        if key in given:
            if getattr(args, key) != value:
                print(f'=> --{key.replace("_", "-")} {_flag_value(getattr(args, key))} given; the checkpoint '
                      f'was made with {_flag_value(value)}')
        elif getattr(args, key) != value:
            setattr(args, key, value)
            taken.append(f'{key}={_flag_value(value)}')
    if taken:
        print(f"=> settings from the checkpoint: {'  '.join(taken)}")


def _flag_value(value):
    return ' '.join(map(str, value)) if isinstance(value, list) else str(value)


def take_checkpoint_backbone(args, given, checkpoint):
    """Unless --backbone is given, the trunk a checkpoint was made with, when it says so (ours:
    'args', older ones: 'arch')."""
    stored = checkpoint.get('args')
    arch = stored.get('backbone', checkpoint.get('arch')) if isinstance(stored, dict) else checkpoint.get('arch')
    if 'backbone' not in given and arch in RESNET_LAYOUTS:
        args.backbone = arch


def _announce_replaced(given, settings, flag, kind):
    if flag in given and kind in settings:
        print(f"=> -{flag} given: it replaces the checkpoint's {kind.replace('_', ' ')}")


def word_vectors_input(args, given, settings):
    """The word vectors [C, 300] of the checkpoint, unless -word_file is given; else the word file
    (None: the dataset's default file)."""
    _announce_replaced(given, settings, 'word_file', 'word_vectors')
    return settings['word_vectors'] if 'word_file' not in given and 'word_vectors' in settings else args.word_file


def label_graph_input(args, given, settings, dataset, train_set=None, num_classes=None):
    """The label graph {adj, nums}: -graph_file if given, else the checkpoint's, else the default
    file of ``dataset`` (a DatasetSpec; downloaded when missing), or for a dataset without one
    (your own data) the graph that its ``build_graph`` makes from ``train_set``."""
    _announce_replaced(given, settings, 'graph_file', 'graph')
    if 'graph_file' not in given and 'graph' in settings:
        return settings['graph']
    if args.graph_file is None and dataset is None:
        raise CheckpointError('the checkpoint holds no label graph: pass -graph_file')
    if args.graph_file is None and dataset.build_graph is not None:
        if train_set is None:
            raise UsageError('-e needs the label graph: pass -graph_file, or --resume a checkpoint of ours (it '
                             'holds the graph)')
        return dataset.build_graph(train_set, args.save_dir)
    return label_files.load_adjacency(args.graph_file or label_files.default_file(dataset.name, 'graph'),
                                      num_classes, download=args.download)


# ---- builders: the only functions that read the parsed arguments ---------------------------------

def choose_save_dir(args, given, dataset):
    """``args.save_dir``: as given; else the folder of the ``--resume`` file (a copied run goes on in
    its copy); else the dataset's default, for your own data one folder per dataset folder."""
    if 'save_dir' in given:
        return
    if args.resume:
        args.save_dir = os.path.dirname(os.path.abspath(args.resume))
    elif dataset.classes is None:
        args.save_dir = os.path.join(args.save_dir, os.path.basename(os.path.abspath(args.data)))


def claim_save_dir(args):
    """A training run never writes over another run's files: when ``args.save_dir`` holds a run that
    is not the one resumed, stop with a UsageError, or with ``--overwrite`` delete that run's files."""
    folder = args.save_dir
    if args.evaluate or (args.resume and os.path.dirname(os.path.abspath(args.resume)) == os.path.abspath(folder)):
        return
    held = run_folder.held_run(folder)
    if held is None:
        return
    if not args.overwrite:
        raise UsageError(f'{folder} holds another run ({held}): continue it with --resume '
                         f'{os.path.join(folder, run_folder.CHECKPOINT_NAME)}, choose another --save-dir, or pass '
                         '--overwrite to delete its files first')
    if distributed.is_main_process():
        removed = run_folder.remove_run(folder)
        print(f'=> --overwrite: deleted the {len(removed)} files of the run in {folder} ({held})')
    distributed.barrier()


def checked_amp(args, given, device):
    """Whether autocast is on: ``--amp`` / ``--no-amp`` as given, else on when ``--amp-dtype`` is given
    (which sets ``args.amp``) or on CUDA. float16 autocast needs CUDA: a UsageError elsewhere."""
    if args.amp is None and 'amp_dtype' in given:
        args.amp = True
    amp = device.type == 'cuda' if args.amp is None else args.amp
    if amp and args.amp_dtype == 'float16' and device.type != 'cuda':
        raise UsageError('--amp in float16 needs CUDA; on the CPU use --amp-dtype bfloat16, or leave --amp out')
    return amp


def init_run(args, device):
    """Seed every generator with ``args.seed`` + rank; print the arguments and git commit."""
    if args.seed is not None:
        seed_everything(args.seed + distributed.get_rank())
    print(f'git commit: {_git_commit()}  processes: {distributed.get_world_size()}  device: {device}')
    print('arguments: ' + '  '.join(f'{k}={v}' for k, v in sorted(vars(args).items())))


def _git_commit():
    try:
        return subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO_DIR, capture_output=True, text=True,
                              timeout=10).stdout.strip() or 'unknown'
    except (OSError, subprocess.SubprocessError):
        return 'unknown'


def build_datasets(args, dataset, word_vectors, classes=None):
    """(train, test) datasets of the DatasetSpec; train is None with ``-e`` (never read then).
    ``classes``: the class names for a loader whose classes come from the data (a checkpoint's)."""
    options = dict(inp_name=word_vectors, download=args.download, skip_corrupt=args.skip_corrupt,
                   **{key: getattr(args, key) for key in dataset.loader_flags})
    if classes is not None:
        options['classes'] = classes
    train_split, test_split = dataset.splits[0], evaluated_split(args, dataset)
    train = None if args.evaluate else dataset.loader(args.data, train_split, **options)
    return train, dataset.loader(args.data, test_split, **options)


def evaluated_split(args, dataset):
    return args.split or dataset.splits[1]


def build_model(args, num_classes, graph, finetune=None):
    """MSRN with the label graph; trunk weights from ImageNet, unless resuming, fine-tuning (every
    fitting weight of ``finetune``, the checkpoint dict of ``--finetune``) or ``--pretrained 0``."""
    model = MSRN(num_classes, args.pool_ratio, args.backbone, graph, attention=args.attention)
    if finetune is not None:
        loaded, fresh = ckpt.load_matching(model, finetune)
        print(f'=> fine-tuning from {args.finetune}: {len(loaded)} weights loaded, {len(fresh)} start fresh'
              + (f" ({', '.join(fresh[:6])}{' ...' if len(fresh) > 6 else ''})" if fresh else ''))
    elif args.pretrained and not args.resume:
        path = args.pretrain_model or ckpt.default_pretrained_path(args.backbone)
        print(f'=> ImageNet weights of the trunk from {path}')
        ckpt.load_imagenet_trunk(model, path, args.backbone)
    if args.channels_last:
        model.resnet_101.to(memory_format=torch.channels_last)
    model.compile_trunk = args.compile
    return model


def build_optimizer(args, model):
    """The official SGD: ``model.get_config_optim(lr)`` groups (trunk at lr x 0.1)."""
    return torch.optim.SGD(model.get_config_optim(args.lr), lr=args.lr, momentum=args.momentum,
                           weight_decay=args.weight_decay)


def build_criterion(args):
    return build_loss(args.loss, gamma_neg=args.asl_gamma_neg, gamma_pos=args.asl_gamma_pos, clip=args.asl_clip)


def build_engine(args, *, device, resume, class_names, settings, difficult_examples=True, val_split='val',
                 thresholds=None):
    """The MSRN engine from the command line; ``resume``: the checkpoint dict read (or None);
    ``val_split``: the evaluated split's name."""
    return GCNMultiLabelMAPEngine(
        device=device, batch_size=args.batch_size, workers=args.workers, max_epochs=args.epochs,
        start_epoch=args.start_epoch, epoch_step=args.epoch_step, image_size=args.image_size,
        print_freq=args.print_freq, save_dir=args.save_dir, resume=resume, evaluate=args.evaluate,
        eval_name=eval_name(args) if args.evaluate else None, seed=args.seed,
        clip_grad_norm=args.clip_grad_norm or None, amp=args.amp, amp_dtype=AMP_DTYPES[args.amp_dtype],
        channels_last=args.channels_last, progress=args.progress, sync_bn=args.sync_bn, ema_decay=args.ema_decay,
        loss_name=args.loss, arch=args.backbone, settings=settings, class_names=class_names,
        difficult_examples=difficult_examples, tensorboard=args.tensorboard, lr_names=OPTIMIZER_GROUPS,
        val_split=val_split, thresholds=thresholds, calibrate=args.calibrate,
        thresholds_name=unused_name(args.save_dir, 'thresholds', '.json') if args.calibrate else None)


def eval_name(args):
    """The eval JSON of ``-e``: named after the checkpoint (and the split, when ``--split`` is
    given), never overwriting an earlier one."""
    stem = re.sub(r'(\.pth)?(\.tar)?$', '', os.path.basename(args.resume)) if args.resume else 'weights'
    return unused_name(args.save_dir, f'eval_{stem}' + (f'_{args.split}' if args.split else ''), '.json')


def unused_name(folder, stem, suffix):
    """``stem + suffix``, or ``stem-2 + suffix``, ... : the first name not taken in ``folder``."""
    name, n = stem + suffix, 1
    while os.path.exists(os.path.join(folder, name)):
        n += 1
        name = f'{stem}-{n}{suffix}'
    return name


def released_dataset(args, checkpoint):
    """The DatasetSpec of a checkpoint without class names: ``--dataset``, or its class count."""
    released = released_datasets()
    if args.dataset:
        return released[args.dataset]
    num_classes = ckpt.bare_state_dict(checkpoint, f'{args.resume}: ')['fc2.weight'].shape[0]
    matches = [d for d in released.values() if len(d.classes) == num_classes]
    if not matches:
        raise CheckpointError(f'{args.resume}: {num_classes} classes and no class names stored; '
                              f'pass --dataset ({", ".join(released)}) if it is one of these')
    return matches[0]


def build_trained_model(args, given, checkpoint):
    """A trained model to use (predict.py, export.py): (MSRN in eval mode with the checkpoint's weights, word
    vectors (C, 300), class names). A checkpoint of ours brings its classes, graph, word vectors and
    settings; a released one gets those of its dataset (``released_dataset``)."""
    settings = ckpt.stored_settings(checkpoint)
    restore_settings(args, given, settings.get('args', {}), keys=MODEL_SETTINGS)
    take_checkpoint_backbone(args, given, checkpoint)
    dataset = None if 'classes' in settings else released_dataset(args, checkpoint)
    classes = settings['classes'] if dataset is None else list(dataset.classes)
    if args.pool_ratio is None:
        args.pool_ratio = dataset.pool_ratio
    graph = label_graph_input(args, given, settings, dataset, num_classes=len(classes))
    words = word_vectors_input(args, given, settings)
    if not isinstance(words, np.ndarray):  # a file (word vectors or GloVe text): given, or the dataset's
        words = label_files.class_word_vectors(words or label_files.default_file(dataset.name, 'word'), classes,
                                               download=args.download)
    model = MSRN(len(classes), args.pool_ratio, args.backbone, graph)
    ckpt.load_checkpoint(model, checkpoint)
    return model.eval(), torch.as_tensor(words), classes


# ---- the run ------------------------------------------------------------------------------------

def run(args, given, dataset):
    """Build everything and train or evaluate; returns the best (or evaluated) mAP."""
    if args.resume and args.finetune:
        raise UsageError('--resume continues a run, --finetune starts a new one from a checkpoint: give one of them')
    device = distributed.init_distributed_mode(args.device)  # first: only rank 0 prints what follows
    if args.resume:
        print(f'=> reading checkpoint {args.resume}')
    checkpoint = ckpt.read_checkpoint(args.resume) if args.resume else None
    settings = ckpt.stored_settings(checkpoint) if checkpoint is not None else {}
    if 'args' in settings:
        restore_settings(args, given, settings['args'])
    finetune = ckpt.read_checkpoint(args.finetune) if args.finetune else None
    source = checkpoint if checkpoint is not None else finetune
    if source is not None:
        take_checkpoint_backbone(args, given, source)
    if args.data is None:
        raise UsageError('the dataset folder DIR is missing (a checkpoint of ours given with --resume supplies it)')
    for flag in ('split', 'calibrate', 'thresholds'):
        if getattr(args, flag) and not args.evaluate:
            raise UsageError(f'--{flag} goes with -e (an evaluation); add -e, or leave --{flag} out')
    choose_save_dir(args, given, dataset)
    claim_save_dir(args)
    init_run(args, device)
    checked_amp(args, given, device)  # args.amp None stays None: the engine turns it on for CUDA
    fixed, stored = dataset.classes, settings.get('classes')   # fixed: None for your own data
    if fixed is not None and stored is not None and stored != list(fixed):
        raise CheckpointError(f"{args.resume}: the checkpoint's {len(stored)} classes ({', '.join(stored[:3])}, "
                              "...) are not this dataset's; use the demo script of its dataset")
    train_set, test_set = build_datasets(args, dataset, word_vectors_input(args, given, settings),
                                         classes=stored if fixed is None else None)
    classes = test_set.classes
    graph = label_graph_input(args, given, settings, dataset, train_set, len(classes))
    model = build_model(args, len(classes), graph, finetune)
    stored_args = dict(vars(args), data=os.path.abspath(args.data), save_dir=os.path.abspath(args.save_dir))
    run_settings = ckpt.settings_entries(args=stored_args, classes=classes, graph=graph,
                                         word_vectors=test_set.inp.numpy())
    thresholds = None
    if args.thresholds:
        thresholds = {'values': metrics.read_thresholds(args.thresholds, classes)['thresholds'],
                      'source': args.thresholds}
    engine = build_engine(args, device=device, resume=checkpoint, class_names=classes, settings=run_settings,
                          val_split=evaluated_split(args, dataset), thresholds=thresholds)
    try:
        return engine.learning(model, build_criterion(args), train_set, test_set,
                               None if args.evaluate else build_optimizer(args, model))
    finally:
        distributed.cleanup()


def main(dataset, argv=None):
    """Entry point of a demo script: parse and run; returns the exit code."""
    args, given = parse_args(get_args_parser(dataset), argv)
    return guarded(run, args, given, dataset)


def guarded(action, *args):
    """Run ``action(*args)``. Bad input (the project's own errors) becomes one line on stderr and
    exit code 2; anything else is a bug and keeps its traceback (exit code 1)."""
    try:
        action(*args)
        return 0
    except MSRNError as e:
        print(f'error: {e.line}', file=sys.stderr, flush=True)
        return 2
    except torch.cuda.OutOfMemoryError:
        traceback.print_exc()
        print('hint: the GPU ran out of memory; try a smaller --batch-size (-b) or --image-size', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130
