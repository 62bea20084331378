"""The command line: the demo scripts' parser, the flags it shares with predict.py, export.py and
app.py, and parsing that tells the flags given from the defaults. Running is run.py's job.

Every flag of a demo script is declared once, in one of two argument groups:

- *the recipe*: what the run is. Stored in every checkpoint (``args``); ``--resume`` takes each one
  the command line does not give (``run.restore_settings`` walks this group).
- *this invocation*: what to do now, and where. Never taken from a checkpoint.

The loop's flags take their defaults from ``engine.LoopSettings``, which the engine is built from.
Defaults that are paths (graph and word files, save folder) resolve against the repository, so
the scripts run from any working directory.
"""
import argparse
import os
import re
import sys

# before torchvision (engine), whose import probes Triton: attention.py makes a broken one look absent
from attention import ATTENTIONS  # noqa: I001
import apparel
import coco
import label_files
import losses
import metrics
import nuswide
import voc
from engine import AMP_DTYPES, LoopSettings
from errors import UsageError, guarded
from models import DEFAULT_BACKBONE, RESNET_LAYOUTS

REPO_DIR = os.path.dirname(os.path.abspath(__file__))
PICKLE_WARNING = 'pickles can run code when loaded: pass only files you trust (.npy/.npz also accepted)'
RECIPE = 'the recipe'
INVOCATION = 'this invocation'
LOOP = LoopSettings()  # the loop's defaults
RELEASED_IMAGE_SIZE = 448  # the released models were trained and evaluated at 448 px
# the datasets with released checkpoints, whose class count recognises them
RELEASED_DATASETS = {spec.name: spec for spec in (voc.DATASET, coco.DATASET, nuswide.DATASET, apparel.DATASET)}


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


def entry(parser, action, argv=None):
    """An entry script's main: parse ``argv`` with ``parser``, then ``action(args, given, recipe)``
    (``errors.guarded``); returns the exit code."""
    args, given = parse_args(parser, argv)
    return guarded(action, args, given, recipe_names(parser))


def recipe_names(parser):
    """The names of the flags in ``parser``'s recipe group (empty if it has none)."""
    return [action.dest for group in parser._action_groups if group.title == RECIPE
            for action in group._group_actions]


def recipe_group(parser):
    return parser.add_argument_group(RECIPE, 'what the run is: stored in its checkpoints; --resume takes every one '
                                             'not given from there')


def invocation_group(parser):
    return parser.add_argument_group(INVOCATION, 'what to do now, and where: never taken from a checkpoint')


# ---- flags several entry scripts share ----------------------------------------------------------

def add_model_arguments(group, pool_ratio=None):
    """--pool_ratio and --backbone; ``pool_ratio`` None: the dataset's (predict.py)."""
    shown = pool_ratio if pool_ratio is not None else "the dataset script's"
    group.add_argument('--pool_ratio', '-po', default=pool_ratio, type=float, metavar='O',
                       help=f"label groups K = int(pool_ratio x classes) (default: the checkpoint's, else {shown})")
    group.add_argument('--backbone', '-bb', default=DEFAULT_BACKBONE, choices=list(RESNET_LAYOUTS), metavar='B',
                       help=f"trunk: {', '.join(RESNET_LAYOUTS)} (default: the checkpoint's, else {DEFAULT_BACKBONE})")


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


def add_device_argument(group):
    group.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'],
                       help='auto: CUDA when available (default)')


def add_amp_arguments(group):
    group.add_argument('--amp', default=LOOP.amp, action=argparse.BooleanOptionalAction,
                       help='mixed precision: autocast in --amp-dtype (default: on with CUDA, as official)')
    group.add_argument('--amp-dtype', default=LOOP.amp_dtype, choices=list(AMP_DTYPES),
                       help='float16 (default, as official; with gradient scaling; CUDA only) or bfloat16 (no '
                            'scaling needed; Ampere and later GPUs, and the CPU); giving it turns --amp on')


def add_progress_argument(group):
    group.add_argument('--progress', default=LOOP.progress, action=argparse.BooleanOptionalAction,
                       help='progress bars (default: only when stderr is a terminal)')


def add_trained_model_arguments(parser):
    """A trained model (predict.py, export.py, app.py): its checkpoint, a released checkpoint's
    dataset, the label files, the device, and in the recipe group the image size and model flags
    (default: the checkpoint's). Returns the invocation group, for the script's own flags."""
    recipe = recipe_group(parser)
    recipe.add_argument('--image-size', '-i', default=RELEASED_IMAGE_SIZE, type=int, metavar='N',
                        help=f"image side the model sees (default: the checkpoint's, else {RELEASED_IMAGE_SIZE})")
    add_model_arguments(recipe)
    invocation = invocation_group(parser)
    invocation.add_argument('--resume', required=True, metavar='CKPT', help='checkpoint (ours or a released one)')
    invocation.add_argument('--dataset', default=None, choices=list(RELEASED_DATASETS),
                            help="a released checkpoint's dataset (default: recognised by its class count)")
    add_label_file_arguments(invocation)
    add_device_argument(invocation)
    return invocation


def add_threshold_arguments(parser, meaning, instead):
    """--threshold P (``meaning``: what P does, for --help) and --thresholds FILE (per class, a
    thresholds.json of -e --calibrate; ``instead``: of what); run.checked_thresholds checks them."""
    parser.add_argument('--threshold', default=metrics.DEFAULT_THRESHOLD, type=float, metavar='P',
                        help=f'{meaning} (default: {metrics.DEFAULT_THRESHOLD}, the logit-0 rule)')
    parser.add_argument('--thresholds', metavar='FILE',
                        help='per-class probability thresholds (thresholds.json of -e --calibrate) instead of '
                             f'{instead}')


LOADER_FLAGS = {  # flags of some loaders only: a DatasetSpec's loader_flags names them
    'image_label': (('--image-label',), dict(default=None, metavar='PATH', help=(
        'official one-folder layout: the official image_label.pkl (e.g. data/apparel/image_label.pkl); '
        'pickles can run code when loaded: pass only files you trust'))),
}


# ---- the demo scripts' parser -------------------------------------------------------------------

def get_args_parser(dataset):
    """The official flags (same spellings and defaults as the official script) plus ours, in the
    recipe group and the invocation group."""
    parser = ArgumentParser(
        description=f'Train or evaluate MSRN on {dataset.title}.',
        epilog='Several GPUs: torchrun --nproc_per_node N %(prog)s ... (see docs/training.md).')
    add_recipe_arguments(recipe_group(parser), dataset)
    add_invocation_arguments(invocation_group(parser), dataset)
    return parser


def add_recipe_arguments(group, dataset):
    group.add_argument('data', metavar='DIR', nargs='?', default=None,
                       help=f"dataset folder ({dataset.layout}); with --resume, default: the checkpoint's")
    size = dataset.image_size or LOOP.image_size
    group.add_argument('--image-size', '-i', default=size, type=int, metavar='N',
                       help=f'image side in pixels (default: {size}, as the official script; the paper used 448)')
    for name in dataset.loader_flags:
        flags, options = LOADER_FLAGS[name]
        group.add_argument(*flags, **options)
    add_model_arguments(group, dataset.pool_ratio)
    group.add_argument('--epochs', default=LOOP.epochs, type=int, metavar='N',
                       help=f'train until this epoch (default: {LOOP.epochs}, what the official loop ran)')
    group.add_argument('--epoch_step', '--epoch-step', default=list(LOOP.epoch_step), type=_epoch_list,
                       metavar='E [E ...]', help='epochs at which the lr is multiplied by 0.1 (default: '
                                                 f"{' '.join(map(str, LOOP.epoch_step))})")
    group.add_argument('-b', '--batch-size', default=LOOP.batch_size, type=int, metavar='N',
                       help=f'images per batch and process (default: {LOOP.batch_size})')
    group.add_argument('--lr', '--learning-rate', default=0.1, type=float, metavar='LR',
                       help='learning rate of the head; the trunk gets lr x 0.1 (default: 0.1)')
    group.add_argument('--momentum', default=0.9, type=float, metavar='M', help='SGD momentum (default: 0.9)')
    group.add_argument('--weight-decay', '--wd', default=1e-4, type=float, metavar='W',
                       help='weight decay (default: 1e-4)')
    group.add_argument('--clip-grad-norm', default=LOOP.clip_grad_norm, type=float, metavar='NORM',
                       help='clip the gradient norm to NORM after unscaling; 0 = off (default, as published)')
    add_amp_arguments(group)
    group.add_argument('--sync-bn', default=LOOP.sync_bn, action='store_true',
                       help='under torchrun, BatchNorm statistics over all processes (N x -b, as on one GPU)')
    group.add_argument('--loss', default=LOOP.loss, choices=losses.LOSSES,
                       help=f'classification loss (default: {LOOP.loss}, the official one); asl: the asymmetric '
                            "loss; MSRN's group loss is added to either")
    for name, meaning in (('gamma_neg', 'focusing of negatives'), ('gamma_pos', 'focusing of positives'),
                          ('clip', 'probability shift of negatives')):
        default = losses.ASL_DEFAULTS[name]
        group.add_argument(f"--asl-{name.replace('_', '-')}", default=default, type=float, metavar='G',
                           help=f'asl: {meaning} (default: {default:g})')
    group.add_argument('--ema-decay', default=LOOP.ema_decay, type=float, metavar='D',
                       help='also keep an exponential moving average of the weights with this decay (e.g. '
                            '0.9997) and validate it; 0 = off (default, as published)')
    group.add_argument('--seed', default=LOOP.seed, type=int, metavar='S',
                       help='seed every generator (+ rank); with -j 0 a CPU run repeats bit for bit')


def add_invocation_arguments(group, dataset):
    workers = min(dataset.workers or LOOP.workers, os.cpu_count() or 1)
    group.add_argument('-j', '--workers', default=workers, type=int, metavar='N',
                       help=f'data loading processes (default: {workers}: the official '
                            f'{dataset.workers or LOOP.workers}, at most the CPU count)')
    add_label_file_arguments(group, dataset)
    group.add_argument('--skip-corrupt', action='store_true',
                       help='leave unreadable images out (their count is printed) instead of stopping')
    group.add_argument('--pretrained', dest='pretrained', default=1, type=int, metavar='0|1',
                       help='start the trunk from ImageNet weights (default: 1)')
    group.add_argument('-pm', '--pretrain_model', default=None, metavar='PATH',
                       help='ImageNet weights of the trunk (default: pretrained/<backbone>.pth.tar, '
                            'downloaded from download.pytorch.org when missing)')
    group.add_argument('--finetune', default=None, metavar='PATH',
                       help='start a new run from another MSRN checkpoint: every weight whose name and shape '
                            'fit is loaded, the rest (e.g. the classifier for other classes) starts fresh')
    group.add_argument('--start-epoch', default=LOOP.start_epoch, type=int, metavar='N',
                       help=f'first epoch when not resuming; also places the lr schedule (default: {LOOP.start_epoch})')
    group.add_argument('--print-freq', '-p', default=LOOP.print_freq, type=int, metavar='N',
                       help='print a line every N batches; 0 = progress bar only (default: 0)')
    add_progress_argument(group)
    group.add_argument('--resume', default='', metavar='PATH|auto',
                       help='checkpoint to continue from (ours or a released one); missing = error. Settings '
                            'not given on the command line are taken from it. auto: the checkpoint of the save '
                            'folder if there is one, else a new run (the same command line can run again)')
    group.add_argument('--checkpoint-interval', default=LOOP.checkpoint_interval, type=float, metavar='MIN',
                       help='also write checkpoint.pth.tar within an epoch when the last one is MIN minutes old, so '
                            'a crash loses at most that much; 0 = only after each epoch (default: '
                            f'{LOOP.checkpoint_interval:g})')
    group.add_argument('--requeue-signal', default='USR1', choices=['USR1', 'USR2', 'HUP', 'TERM'],
                       help="the signal after which (besides SIGTERM) a run stops at the next step with a "
                            "checkpoint, and under SLURM queues its job again (default: USR1, for SLURM's "
                            '--signal=USR1@120)')
    group.add_argument('--connect-timeout', default=120, type=int, metavar='S',
                       help='under torchrun, seconds the processes may take to join one another (default: 120)')
    group.add_argument('-e', '--evaluate', dest='evaluate', action='store_true',
                       help='evaluate the model on the test split and exit (use with --resume); '
                            'nothing of the training split is read')
    group.add_argument('--split', default=None, metavar='NAME',
                       help=f'with -e: the split to evaluate (default: {dataset.splits[1]}; your own data may '
                            'add test.csv)')
    group.add_argument('--calibrate', default=None, type=_objective, metavar='f1|precision=P',
                       help='with -e: choose a probability threshold per class on the evaluated split, for its '
                            'best F1 or the lowest reaching precision P, and write thresholds.json beside the '
                            'eval JSON')
    group.add_argument('--thresholds', default=None, metavar='FILE',
                       help='with -e: also measure OP ... CF1 with these per-class thresholds (a thresholds.json '
                            'calibrated on another split)')
    group.add_argument('--report', action='store_true',
                       help='with -e: also write the evaluation as one self-contained HTML page beside the eval JSON '
                            '(per-class table, precision-recall curves, the most wrong images with their attention, '
                            'the label graph)')
    own_data = '/<DIR\'s name>' if dataset.classes is None else ''
    group.add_argument('--save-dir', default=os.path.join(REPO_DIR, dataset.save_dir), metavar='DIR',
                       help=f'checkpoints, logs, eval JSON, curves and TensorBoard events (default: the folder '
                            f'of the --resume file, else {dataset.save_dir}{own_data} in the repo)')
    group.add_argument('--overwrite', action='store_true',
                       help='a new run whose --save-dir holds another run: delete that run\'s files first '
                            '(default: stop with an error)')
    group.add_argument('--no-tensorboard', dest='tensorboard', default=LOOP.tensorboard, action='store_false',
                       help='write no TensorBoard events into the save folder (default: write them while '
                            'training; view with tensorboard --logdir DIR)')
    add_device_argument(group)
    # how the model runs on this machine (the same results up to float rounding)
    group.add_argument('--attention', default='auto', choices=list(ATTENTIONS),
                       help='label attention: auto (default: fused Triton kernels on CUDA once they pass a check, '
                            'chunked PyTorch otherwise), fused (the kernels or an error), chunked, or plain (the '
                            'official formula: much more memory)')
    group.add_argument('--channels-last', default=LOOP.channels_last, action='store_true',
                       help='the model and the images in channels-last memory format (faster convolutions on '
                            'recent GPUs)')
    group.add_argument('--compile', action='store_true',
                       help='torch.compile the trunk (the first batches compile; if compiling fails, a warning '
                            'and eager mode)')
