"""Running the entry scripts: the parsed arguments turned into datasets, model, optimizer, loss and
engine, the settings a checkpoint brings, the save folder; then training, or with ``-e`` an
evaluation (``evaluation.py``). Also the trained model that predict.py, export.py and app.py use.

Modules that read the parsed arguments: run.py, predict.py, export.py and app.py.

Every other module takes explicit keyword arguments (the scripts under tools/ and bench/ have
small parsers of their own).
"""
import dataclasses
import os
import re
import subprocess

import numpy as np
import torch

import checkpoint as ckpt
import cli
import distributed
import evaluation
import label_files
import preemption
import report_page
import run_folder
from engine import GCNMultiLabelMAPEngine, LoopSettings
from errors import CheckpointError, UsageError
from losses import build_loss
from models import MSRN, RESNET_LAYOUTS
from util import seed_everything

# flags that only training reads, left out of what an evaluation prints
TRAINING_ONLY = {'epochs', 'epoch_step', 'lr', 'momentum', 'weight_decay', 'clip_grad_norm', 'sync_bn', 'ema_decay',
                 'start_epoch', 'overwrite', 'tensorboard', 'finetune', 'pretrained', 'pretrain_model',
                 'checkpoint_interval', 'requeue_signal'}
EVALUATION_ONLY = {'split', 'calibrate', 'thresholds', 'report'}
ASL_FLAGS = {'asl_gamma_neg', 'asl_gamma_pos', 'asl_clip'}
QUIET_DEFAULTS = {'download': True, 'print_freq': 0}  # defaults that turn nothing on: not printed


def main(dataset, argv=None):
    """Entry point of a demo script: parse and run; returns the exit code."""
    return cli.entry(cli.get_args_parser(dataset), lambda args, given, recipe: run(args, given, dataset, recipe), argv)


def run(args, given, dataset, recipe):
    """Build everything, then train (returns the best mAP) or with ``-e`` evaluate (its mAP).
    ``recipe``: the names of the recipe flags (``cli.recipe_names``)."""
    check_flags(args)
    device = distributed.init_distributed_mode(args.device, args.connect_timeout)  # first: rank 0 prints what follows
    auto = args.resume == 'auto'
    if auto:
        find_resumed(args, given, dataset)
    checkpoint, stored, finetune = restore(args, given, recipe)
    if auto and checkpoint is not None:
        check_same_run(args, given, dataset, stored)
        if finished(checkpoint, args.epochs):
            print(f"=> --resume auto: the run in {os.path.dirname(args.resume)} finished its {args.epochs} epochs "
                  f"(best mAP {float(checkpoint.get('best_score', 0.0)):.3f}): nothing to train")
            return None
    if args.data is None:
        raise UsageError('the dataset folder DIR is missing (a checkpoint of ours given with --resume supplies it)')
    choose_save_dir(args, given, dataset)
    claim_save_dir(args)
    amp = checked_amp(args, given, device)
    init_run(args, device, settings_in_effect(args, given, stored, recipe, amp))
    fixed = dataset.classes   # None for your own data
    if fixed is not None and stored.classes is not None and stored.classes != list(fixed):
        raise CheckpointError(f"{args.resume}: the checkpoint's {len(stored.classes)} classes "
                              f"({', '.join(stored.classes[:3])}, ...) are not this dataset's; use the demo script of "
                              'its dataset')
    train_set, test_set = build_datasets(args, dataset, word_vectors_input(args, given, stored),
                                         classes=stored.classes if fixed is None else None)
    classes = test_set.classes
    graph = label_graph_input(args, given, stored, dataset, train_set, len(classes))
    model = build_model(args, len(classes), graph, checkpoint, finetune)
    run_settings = ckpt.RunSettings(dataset=dataset.name, args=recipe_values(args, recipe), classes=classes,
                                    graph=graph, word_vectors=test_set.inp.numpy())
    try:
        if args.evaluate:
            engine = build_engine(args, device, checkpoint, run_settings, evaluated_split(args, dataset))
            report = build_report(args, dataset, stored, test_set, graph, model, device) if args.report else None
            return evaluation.evaluate(
                engine, model, build_criterion(args), test_set, epoch=engine.start_epoch, eval_name=eval_name(args),
                thresholds=args.thresholds, calibrate=args.calibrate,
                thresholds_name=unused_name(args.save_dir, 'thresholds', '.json'), data=os.path.abspath(args.data),
                write_page=report)
        with preemption.handling(args.requeue_signal) as stop:
            engine = build_engine(args, device, checkpoint, run_settings, evaluated_split(args, dataset), stop)
            return engine.learning(model, build_criterion(args), train_set, test_set, build_optimizer(args, model))
    finally:
        distributed.cleanup()


def check_flags(args):
    """Flags that cannot go together: a UsageError."""
    if args.resume and args.finetune:
        raise UsageError('--resume continues a run, --finetune starts a new one from a checkpoint: give one of them')
    for flag in sorted(EVALUATION_ONLY):
        if getattr(args, flag) and not args.evaluate:
            raise UsageError(f'--{flag} goes with -e (an evaluation); add -e, or leave --{flag} out')


# ---- settings from a checkpoint -----------------------------------------------------------------

def find_resumed(args, given, dataset):
    """``--resume auto``: ``args.resume`` becomes the checkpoint of the save folder when it has one,
    else '' (a new run). The folder is the one a new run of this command line would use."""
    if 'save_dir' not in given and dataset.classes is None and args.data is None:
        raise UsageError('--resume auto with your own data needs the dataset folder DIR (or --save-dir) to find '
                         'the run')
    choose_save_dir(args, given, dataset)
    given.add('save_dir')   # decided: the resumed checkpoint's folder is this one
    path = os.path.join(args.save_dir, run_folder.CHECKPOINT_NAME)
    if os.path.exists(path):
        print(f'=> --resume auto: continuing the run in {args.save_dir}')
        args.resume = path
    else:
        print(f'=> --resume auto: no checkpoint in {args.save_dir}: a new run')
        args.resume = ''


def check_same_run(args, given, dataset, stored):
    """``--resume auto`` continues only the run this command line started: a checkpoint of another
    dataset, data folder or trunk is an error that names the difference (other classes than a
    dataset's own: ``run``'s check of every resumed checkpoint)."""
    where = f'{args.save_dir} holds a run of'
    if stored.dataset is not None and stored.dataset != dataset.name:
        raise UsageError(f'{where} {stored.dataset}, not {dataset.name}: choose another --save-dir')
    made = stored.args or {}
    for flag in ('data', 'backbone'):
        if flag in given and made.get(flag) is not None:
            now = os.path.abspath(args.data) if flag == 'data' else args.backbone
            if now != made[flag]:
                raise UsageError(f'{where} {made[flag]}, not {now} ({flag}): choose another --save-dir, or leave '
                                 f'--resume auto out to start a new run elsewhere')


def finished(checkpoint, epochs):
    """Whether a checkpoint ends its run: every epoch trained, none in progress."""
    return ckpt.position_of(checkpoint) is None and int(checkpoint.get('epoch', 0)) >= epochs


def restore(args, given, recipe):
    """Read ``--resume`` and ``--finetune``; take the recipe the command line does not give from the
    resumed checkpoint, and the backbone from either. Returns (resumed checkpoint dict or None, its
    ``RunSettings``, the fine-tuning checkpoint dict or None)."""
    checkpoint = None
    if args.resume:
        print(f'=> reading checkpoint {args.resume}')
        checkpoint = ckpt.read_checkpoint(args.resume)
    stored = ckpt.RunSettings.read(checkpoint) if checkpoint is not None else ckpt.RunSettings()
    if stored.args is not None:
        restore_settings(args, given, stored.args, recipe)
    finetune = ckpt.read_checkpoint(args.finetune) if args.finetune else None
    source = checkpoint if checkpoint is not None else finetune
    if source is not None:
        take_checkpoint_backbone(args, given, source)
    return checkpoint, stored, finetune


def restore_settings(args, given, stored, recipe):
    """Take the flags of ``recipe`` (names) that the command line did not give from ``stored`` (a
    checkpoint's 'args'); print one line per given flag that differs from the checkpoint, one line
    for what was taken."""
    taken = []
    for key in recipe:
        if key not in stored:
            continue
        value = stored[key]
        if key in given:
            if getattr(args, key) != value:
                print(f'=> --{key.replace("_", "-")} {_flag_value(getattr(args, key))} given; the checkpoint '
                      f'was made with {_flag_value(value)}')
        elif getattr(args, key) != value:
            setattr(args, key, value)
            taken.append(f'{key}={_flag_value(value)}')
    if taken:
        print(f"=> settings from the checkpoint: {'  '.join(taken)}")


def recipe_values(args, recipe):
    """{flag: value} of the recipe, as every checkpoint stores it ('data': an absolute path)."""
    values = {key: getattr(args, key) for key in recipe}
    if values.get('data') is not None:
        values['data'] = os.path.abspath(values['data'])
    return values


def _flag_value(value):
    return ' '.join(map(str, value)) if isinstance(value, list) else str(value)


def take_checkpoint_backbone(args, given, checkpoint):
    """Unless --backbone is given, the trunk a checkpoint was made with, when it says so."""
    arch = ckpt.checkpoint_backbone(checkpoint)
    if 'backbone' not in given and arch in RESNET_LAYOUTS:
        args.backbone = arch


def _announce_replaced(given, available, flag, kind):
    if flag in given and available:
        print(f"=> -{flag} given: it replaces the checkpoint's {kind}")


def word_vectors_input(args, given, stored):
    """The word vectors (C, 300) of the checkpoint, unless -word_file is given; else the word file
    (None: the dataset's default file)."""
    _announce_replaced(given, stored.word_vectors is not None, 'word_file', 'word vectors')
    return stored.word_vectors if 'word_file' not in given and stored.word_vectors is not None else args.word_file


def label_graph_input(args, given, stored, dataset, train_set=None, num_classes=None):
    """The label graph {adj, nums}: -graph_file if given, else the checkpoint's, else the default
    file of ``dataset`` (a DatasetSpec; downloaded when missing), or for a dataset without one
    (your own data) the graph that its ``build_graph`` makes from ``train_set``."""
    _announce_replaced(given, stored.graph is not None, 'graph_file', 'graph')
    if 'graph_file' not in given and stored.graph is not None:
        return stored.graph
    if args.graph_file is None and dataset is None:
        raise CheckpointError('the checkpoint holds no label graph: pass -graph_file')
    if args.graph_file is None and dataset.build_graph is not None:
        if train_set is None:
            raise UsageError('-e needs the label graph: pass -graph_file, or --resume a checkpoint of ours (it '
                             'holds the graph)')
        return dataset.build_graph(train_set, args.save_dir)
    return label_files.load_adjacency(args.graph_file or label_files.default_file(dataset.name, 'graph'),
                                      num_classes, download=args.download)


# ---- the run's folder and what it prints first --------------------------------------------------

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
    if args.evaluate:
        return
    if distributed.is_main_process():
        for name in run_folder.remove_stale_temporaries(folder):
            print(f'=> removed {os.path.join(folder, name)}: a partial file of a process that was killed while writing')
    if args.resume and os.path.dirname(os.path.abspath(args.resume)) == os.path.abspath(folder):
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


def checked_thresholds(args, given, meaning):
    """--threshold (``meaning``: what it is, for the message) and --thresholds: not both, and a
    probability."""
    if args.thresholds and 'threshold' in given:
        raise UsageError(f'give --threshold ({meaning}) or --thresholds (a file, one per class), not both')
    if not 0 <= args.threshold <= 1:
        raise UsageError(f'--threshold {args.threshold} is not a probability: give a value in [0, 1] (0.5: the '
                         'logit-0 rule)')


def settings_in_effect(args, given, stored, recipe, amp):
    """(recipe, invocation): {flag: value} of the flags that apply to this run. Left out: what
    this kind of run does not read (training flags in an evaluation, ImageNet weights when a
    checkpoint gives the weights, a data file when the checkpoint holds its content, the asymmetric
    loss's flags with another loss), and invocation flags that are off or unset (or at a default
    that turns nothing on: QUIET_DEFAULTS)."""
    unused = set(TRAINING_ONLY) if args.evaluate else set(EVALUATION_ONLY)
    if args.resume or args.finetune:
        unused |= {'pretrained', 'pretrain_model'}
    elif not args.pretrained:
        unused.add('pretrain_model')
    if args.loss != 'asl':
        unused |= ASL_FLAGS
    if not amp:
        unused.add('amp_dtype')
    if distributed.get_world_size() == 1:
        unused.add('connect_timeout')
    for flag, held in (('graph_file', stored.graph), ('word_file', stored.word_vectors)):
        if flag not in given and held is not None:
            unused.add(flag)
    values = dict(vars(args), amp=amp)
    in_recipe = {k: values[k] for k in recipe if k not in unused}
    invocation = {k: v for k, v in sorted(values.items()) if k not in recipe and k not in unused
                  and not (v is None or v is False or v == '' or QUIET_DEFAULTS.get(k, ...) == v)}
    return in_recipe, invocation


def init_run(args, device, settings):
    """Seed every generator with ``args.seed`` + rank; print the git commit and the settings in
    effect (``settings_in_effect``)."""
    if args.seed is not None:
        seed_everything(args.seed + distributed.get_rank())
    print(f'git commit: {_git_commit()}  processes: {distributed.get_world_size()}  device: {device}')
    for title, values in zip(('recipe', 'invocation'), settings):
        print(f'{title}: ' + '  '.join(f'{k}={_flag_value(v)}' for k, v in values.items()))


def _git_commit():
    try:
        return subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=cli.REPO_DIR, capture_output=True,
                              text=True, timeout=10).stdout.strip() or 'unknown'
    except (OSError, subprocess.SubprocessError):
        return 'unknown'


# ---- builders -----------------------------------------------------------------------------------

def build_datasets(args, dataset, word_vectors, classes=None):
    """(train, test) datasets of the DatasetSpec; train is None with ``-e`` (never read then).
    ``classes``: the class names for a loader whose classes come from the data (a checkpoint's)."""
    options = dict(inp_name=word_vectors, download=args.download, skip_corrupt=args.skip_corrupt,
                   **{key: getattr(args, key) for key in dataset.loader_flags})
    if classes is not None:
        options['classes'] = classes
    train = None if args.evaluate else dataset.loader(args.data, dataset.splits[0], **options)
    return train, dataset.loader(args.data, evaluated_split(args, dataset), **options)


def evaluated_split(args, dataset):
    return args.split or dataset.splits[1]


def build_model(args, num_classes, graph, checkpoint=None, finetune=None):
    """MSRN with the label graph, and its weights: the resumed ``checkpoint``'s (strict), every
    fitting weight of ``finetune``, or ImageNet weights for the trunk (unless ``--pretrained 0``)."""
    model = MSRN(num_classes, args.pool_ratio, args.backbone, graph, attention=args.attention,
                 compile_trunk=args.compile)
    if checkpoint is not None:
        ckpt.load_checkpoint(model, checkpoint)
        print(f"=> loaded checkpoint '{args.resume}' (epoch {int(checkpoint.get('epoch', 0))}, best mAP "
              f"{float(checkpoint.get('best_score', 0.0)):.3f})")
    elif finetune is not None:
        loaded, fresh = ckpt.load_matching(model, finetune)
        print(f'=> fine-tuning from {args.finetune}: {len(loaded)} weights loaded, {len(fresh)} start fresh'
              + (f" ({', '.join(fresh[:6])}{' ...' if len(fresh) > 6 else ''})" if fresh else ''))
    elif args.pretrained:
        path = args.pretrain_model or ckpt.default_pretrained_path(args.backbone)
        print(f'=> ImageNet weights of the trunk from {path}')
        ckpt.load_imagenet_trunk(model, path, args.backbone)
    if args.evaluate and checkpoint is None:
        print('=> evaluating the weights as built (no resume checkpoint given)')
    return model


def build_optimizer(args, model):
    """The official SGD: ``model.get_config_optim(lr)`` groups (trunk at lr x 0.1)."""
    return torch.optim.SGD(model.get_config_optim(args.lr), lr=args.lr, momentum=args.momentum,
                           weight_decay=args.weight_decay)


def build_criterion(args):
    return build_loss(args.loss, gamma_neg=args.asl_gamma_neg, gamma_pos=args.asl_gamma_pos, clip=args.asl_clip)


def build_engine(args, device, checkpoint, run_settings, val_split, stop=None):
    """The engine of this process: rank 0 writes the save folder; ``stop``: the StopRequest of
    preemption.handling."""
    settings = LoopSettings(**{field.name: getattr(args, field.name) for field in dataclasses.fields(LoopSettings)})
    folder = run_folder.RunFolder(args.save_dir if distributed.is_main_process() else None)
    return GCNMultiLabelMAPEngine(settings, device=device, folder=folder, resume=checkpoint,
                                  run_settings=run_settings, val_split=val_split, stop=stop)


def build_report(args, dataset, stored, test_set, graph, model, device):
    """``write_page(results, thresholds, label)`` for ``evaluation.evaluate``: writes the HTML page of
    the evaluation (report_page.py) beside the eval JSON, under the eval JSON's name; returns its path."""
    path = os.path.join(args.save_dir, unused_name(args.save_dir, eval_name(args)[:-len('.json')], '.html'))
    info = {'dataset': dataset.title, 'split': evaluated_split(args, dataset), 'data': os.path.abspath(args.data),
            'checkpoint': args.resume or 'none: the weights as built', 'settings': stored.args}
    if args.thresholds:
        info['thresholds_source'] = args.thresholds

    def write_page(results, thresholds, label):
        attention = report_page.ModelAttention(model, test_set.inp, args.image_size, device, args.batch_size)
        return report_page.write_report(
            path, run_info=dict(info, loss=results['loss'], label=label), evaluation=results['eval'],
            scores=results['scores'], targets=results['targets'], classes=test_set.classes, image_paths=test_set.paths,
            graph=graph, thresholds=thresholds, attention=attention, progress=args.progress)
    return write_page


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


# ---- a trained model, for predict.py, export.py and app.py ---------------------------------------

def released_dataset(args, checkpoint):
    """The DatasetSpec of a checkpoint without class names: ``--dataset``, or its class count."""
    if args.dataset:
        return cli.RELEASED_DATASETS[args.dataset]
    num_classes = ckpt.bare_state_dict(checkpoint, f'{args.resume}: ')['fc2.weight'].shape[0]
    matches = [d for d in cli.RELEASED_DATASETS.values() if len(d.classes) == num_classes]
    if not matches:
        raise CheckpointError(f'{args.resume}: {num_classes} classes and no class names stored; '
                              f'pass --dataset ({", ".join(cli.RELEASED_DATASETS)}) if it is one of these')
    return matches[0]


def build_trained_model(args, given, checkpoint, recipe):
    """A trained model to use: (MSRN in eval mode with the checkpoint's weights, word vectors (C, 300),
    class names). A checkpoint of ours brings its classes, graph, word vectors and the ``recipe``
    flags (image size, backbone, pool ratio); a released one gets those of its dataset
    (``released_dataset``)."""
    stored = ckpt.RunSettings.read(checkpoint)
    restore_settings(args, given, stored.args or {}, recipe)
    take_checkpoint_backbone(args, given, checkpoint)
    dataset = None if stored.classes is not None else released_dataset(args, checkpoint)
    classes = stored.classes if dataset is None else list(dataset.classes)
    if args.pool_ratio is None:
        args.pool_ratio = dataset.pool_ratio
    graph = label_graph_input(args, given, stored, dataset, num_classes=len(classes))
    words = word_vectors_input(args, given, stored)
    if not isinstance(words, np.ndarray):  # a file (word vectors or GloVe text): given, or the dataset's
        words = label_files.class_word_vectors(words or label_files.default_file(dataset.name, 'word'), classes,
                                               download=args.download)
    model = MSRN(len(classes), args.pool_ratio, args.backbone, graph)
    ckpt.load_checkpoint(model, checkpoint)
    return model.eval(), torch.as_tensor(words), classes
