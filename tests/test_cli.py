"""The command line: parsing, errors that keep or lose their traceback, evaluation that reads only
the eval split, self-contained checkpoints (resume, -e and predict.py with --resume alone),
the first-release checkpoint layout, --finetune, and the training options (EMA, ASL)."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import cli
import demo_apparel_gcn
import demo_coco_gcn
import demo_nuswide_gcn
import demo_voc2007_gcn
import label_files
import predict
from errors import CheckpointError, DatasetError, UsageError, guarded
from tests.helpers import QUICK, REPO, assert_one_line_error, official_checkpoint, run_main

DEMOS = {'voc': demo_voc2007_gcn, 'coco': demo_coco_gcn, 'nuswide': demo_nuswide_gcn, 'apparel': demo_apparel_gcn}
POOL_RATIOS = {'voc': 0.2, 'coco': 0.05, 'nuswide': 0.05, 'apparel': 0.2}
TINY = {'voc': dict(n_trainval=8, n_test=6), 'coco': dict(n_train=8, n_val=6), 'nuswide': dict(n_train=8, n_val=6),
        'apparel': dict(n_per_folder=1, layout='official')}

def parse(argv, demo=demo_voc2007_gcn):
    return cli.parse_args(cli.get_args_parser(demo.DATASET), argv)


# ---------------------------------------------------------------------------------------------
# Parsing

@pytest.mark.parametrize('argv', [['--epoch_step', '30', '40', 'data/voc'], ['data/voc', '--epoch_step', '30', '40'],
                                  ['--epoch-step=30,40', 'data/voc'], ['--epoch_step', '30,40', 'data/voc']])
def test_epoch_steps_leave_the_folder_alone(argv):
    args, _ = parse(argv)
    assert args.epoch_step == [30, 40] and args.data == 'data/voc'


def test_a_bad_epoch_step_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        parse(['data/voc', '--epoch_step', 'soon'])
    assert info.value.code == 2 and "expected epochs such as 30 or 30,40, not 'soon'" in capsys.readouterr().err


def test_given_flags_are_told_apart_from_defaults():
    args, given = parse(['data/voc', '--lr', '0.1', '--no-download', '-e'])
    assert given == {'data', 'lr', 'download', 'evaluate'}   # --lr given even at its default value
    assert args.lr == 0.1 and args.download is False and args.epochs == 200 and args.amp is None
    assert args.tensorboard is True and parse(['data/voc', '--no-tensorboard'])[0].tensorboard is False


# ---------------------------------------------------------------------------------------------
# Errors: ours are one line, bugs keep their traceback

def test_guarded_turns_only_project_errors_into_one_line(capsys):
    def fail(error):
        raise error

    for error in (DatasetError('a.txt:3: bad line'), CheckpointError('x: not found'), UsageError('no CUDA')):
        assert guarded(fail, error) == 2
        assert capsys.readouterr().err == f'error: {error}\n'
    for error in (ValueError('a bug'), RuntimeError('shape mismatch')):
        with pytest.raises(type(error)):
            guarded(fail, error)


def run_python(code, timeout=300):
    return subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_a_bug_in_the_forward_pass_keeps_its_traceback(synthetic):
    info = synthetic('voc', **TINY['voc'])
    code = f"""
import sys, models, demo_voc2007_gcn as demo
def broken_head(self, features, words):
    raise RuntimeError('injected failure in the head')
models.MSRN.head = broken_head
sys.exit(demo.main(demo.DATASET, {[info['root'], '-graph_file', info['graph_file'], '-word_file', info['word_file'],
                                   '-e', *QUICK]!r}))
"""
    result = run_python(code)
    assert result.returncode == 1, result.stderr
    assert 'Traceback' in result.stderr and 'in broken_head' in result.stderr
    assert 'RuntimeError: injected failure in the head' in result.stderr
    assert not [line for line in result.stderr.splitlines() if line.startswith('error:')]


def test_a_bug_in_a_loader_worker_keeps_its_traceback(synthetic):
    info = synthetic('voc', **TINY['voc'])
    argv = [info['root'], '-graph_file', info['graph_file'], '-word_file', info['word_file'], '-e', *QUICK]
    argv[argv.index('-j') + 1] = '1'
    code = f"""
import sys, util, demo_voc2007_gcn as demo
def broken_warp(self, img):
    raise ValueError('transform bug')
util.Warp.__call__ = broken_warp
sys.exit(demo.main(demo.DATASET, {argv!r}))
"""
    result = run_python(code)
    assert result.returncode == 1, result.stderr
    assert 'in broken_warp' in result.stderr and 'ValueError: transform bug' in result.stderr
    assert not [line for line in result.stderr.splitlines() if line.startswith('error:')]


def test_amp_on_the_cpu_is_a_one_line_error(synthetic):
    info = synthetic('voc', **TINY['voc'])
    result = run_main('demo_voc2007_gcn.py', info['root'], '--amp', *QUICK)
    assert_one_line_error(result, r'--amp in float16 needs CUDA; on the CPU use --amp-dtype bfloat16')


# ---------------------------------------------------------------------------------------------
# -e reads nothing of the training split

def drop_training_split(name, root, info):
    """Delete every training image (and VOC's training label files, COCO's training annotations)."""
    if name == 'voc':
        main = os.path.join(root, 'VOCdevkit', 'VOC2007', 'ImageSets', 'Main')
        test_ids = {line.split()[0] for line in open(os.path.join(main, 'aeroplane_test.txt'))}
        for path in os.listdir(main):
            if path.endswith('_trainval.txt'):
                os.remove(os.path.join(main, path))
        images = os.path.join(root, 'VOCdevkit', 'VOC2007', 'JPEGImages')
        for path in os.listdir(images):
            if path[:-4] not in test_ids:
                os.remove(os.path.join(images, path))
    elif name == 'coco':
        shutil.rmtree(os.path.join(root, 'train2014'))
        os.remove(os.path.join(root, 'annotations', 'instances_train2014.json'))
    elif name == 'nuswide':
        for line in list(open(os.path.join(root, 'nus_wid_data.csv')))[1:]:
            if line.rstrip().endswith(',train'):
                os.remove(os.path.join(root, line.split(',')[0]))
    else:
        import apparel
        train, _ = apparel.split_dataset(apparel.read_image_label(root, info['image_label']))
        for path, _ in train.values():
            os.remove(path)


@pytest.mark.parametrize('name', DEMOS)
def test_evaluation_reads_nothing_of_the_training_split(name, synthetic, tmp_path, capsys):
    info = dict(synthetic(name, **TINY[name]))
    root = tmp_path / name
    shutil.copytree(info['root'], root)
    info = {k: (v.replace(info['root'], str(root)) if isinstance(v, str) else v) for k, v in info.items()}
    drop_training_split(name, str(root), info)
    num_classes = len(DEMOS[name].DATASET.classes)
    graph = label_files.load_adjacency(info['graph_file'], num_classes)
    official_checkpoint(str(tmp_path / 'released.pth.tar'), num_classes, POOL_RATIOS[name], 'resnet18', graph)
    argv = [str(root), '-graph_file', info['graph_file'], '-word_file', info['word_file'], '--backbone', 'resnet18',
            '-j', '0', '--device', 'cpu', '--no-download', '-e', '--resume', str(tmp_path / 'released.pth.tar'),
            '--save-dir', str(tmp_path / 'out'), '--progress']
    if name == 'apparel':
        argv += ['--image-label', info['image_label']]
    if name != 'coco':   # the COCO script's own default is the released models' 448 px
        argv += ['--image-size', '64']
    assert DEMOS[name].main(DEMOS[name].DATASET, argv) == 0
    out, err = capsys.readouterr()
    assert f"image_size={448 if name == 'coco' else 64}" in out
    assert len([line for line in out.splitlines() if line.startswith('[dataset]')]) == 1   # the eval split only
    assert '\r' in err   # --progress: bars even when stderr is not a terminal
    result = json.loads((tmp_path / 'out' / 'eval_released.json').read_text())
    assert result['epoch'] == 20 and [r['class'] for r in result['per_class_ap']] == \
        list(DEMOS[name].DATASET.classes)


# ---------------------------------------------------------------------------------------------
# The first official release's checkpoint layout

def first_release_layout(path, released):
    checkpoint = torch.load(released, weights_only=True)
    state = checkpoint['state_dict']
    del state['W'], state['B']
    state['ProjectMs.weight'], state['ProjectMs.bias'] = torch.randn(512, 512), torch.randn(512)
    torch.save(checkpoint, path)


def test_a_first_release_checkpoint_evaluates_like_the_later_layout(synthetic, tmp_path, capsys):
    info = synthetic('voc', **TINY['voc'])
    graph = label_files.load_adjacency(info['graph_file'], 20)
    official_checkpoint(str(tmp_path / 'later.pth.tar'), 20, 0.2, 'resnet18', graph)
    first_release_layout(tmp_path / 'first.pth.tar', tmp_path / 'later.pth.tar')
    scores = []
    for name in ('later', 'first'):
        argv = [info['root'], '-graph_file', info['graph_file'], '-word_file', info['word_file'], '-e', '--resume',
                str(tmp_path / f'{name}.pth.tar'), '--save-dir', str(tmp_path / 'out'), *QUICK]
        assert demo_voc2007_gcn.main(demo_voc2007_gcn.DATASET, argv) == 0
        scores.append(json.loads((tmp_path / 'out' / f'eval_{name}.json').read_text())['mAP'])
    assert scores[0] == scores[1]
    lines = [line for line in capsys.readouterr().out.splitlines() if 'first-release' in line]
    assert len(lines) == 1 and 'ProjectMs.weight, ProjectMs.bias, W, B' in lines[0]


# ---------------------------------------------------------------------------------------------
# Our checkpoints carry their settings: resume, -e and predict.py need nothing else

def test_checkpoints_carry_classes_graph_word_vectors_and_settings(voc_run):
    info, save = voc_run
    full = torch.load(save / 'checkpoint.pth.tar', weights_only=True)
    best = torch.load(save / 'model_best.pth.tar', weights_only=True)
    import voc
    for checkpoint in (full, best):
        assert checkpoint['classes'] == voc.CLASSES
        graph = label_files.load_adjacency(info['graph_file'])
        assert np.array_equal(checkpoint['adj'].numpy(), graph['adj'])
        assert np.array_equal(checkpoint['nums'].numpy(), graph['nums'])
        assert np.array_equal(checkpoint['word_vectors'].numpy(), label_files.load_word_vectors(info['word_file']))
        assert (checkpoint['args']['image_size'], checkpoint['args']['backbone']) == (64, 'resnet18')
        assert checkpoint['args']['data'] == os.path.abspath(info['root'])
    assert {'optimizer', 'scaler', 'rng', 'ema'} <= full.keys()
    assert not {'optimizer', 'scaler', 'rng', 'ema'} & best.keys()
    # the EMA: the same keys and shapes as the weights, other values
    assert full['ema'].keys() == full['state_dict'].keys()
    assert all(full['ema'][k].shape == v.shape for k, v in full['state_dict'].items())
    assert not torch.equal(full['ema']['fc2.weight'], full['state_dict']['fc2.weight'])
    log = [json.loads(line) for line in open(save / 'log.jsonl')]
    assert all('ema_val_mAP' in r for r in log) and best['best_weights'] in ('model', 'ema')
    best_epoch = max(log, key=lambda r: max(r['val_mAP'], r['ema_val_mAP']))
    assert best['epoch'] == best_epoch['epoch'] and best['best_score'] == best_epoch['best_mAP']
    assert len([name for name in os.listdir(save) if name.startswith('events.out.tfevents.')]) == 1  # by default


def test_evaluation_with_the_checkpoint_alone(voc_run, capsys):
    _, save = voc_run
    argv = ['-e', '--resume', str(save / 'model_best.pth.tar'), '--no-download', '-j', '0', '--device', 'cpu']
    for expected in ('eval_model_best.json', 'eval_model_best-2.json'):   # a second one does not overwrite
        assert demo_voc2007_gcn.main(demo_voc2007_gcn.DATASET, argv) == 0
        assert (save / expected).is_file()
    out, err = capsys.readouterr()
    assert 'image_size=64' in out and 'backbone=resnet18' in out
    assert '\r' not in err   # no progress bars when stderr is not a terminal
    best = torch.load(save / 'model_best.pth.tar', weights_only=True)
    record = json.loads((save / 'eval_model_best.json').read_text())
    assert record['mAP'] == pytest.approx(best['best_score'])
    # the summary and the per-class AP table name VOC's split and classes, and the classes without positive
    import voc
    lines = out.splitlines()
    assert [line for line in lines if line.startswith('test: 8 images  mAP')] and 'Test:' not in out
    missing = record['classes_without_positive']
    assert 0 < len(missing) < 20 and f"  no positive image: {', '.join(missing)} (left out of mAP, CP and CR)" in lines
    table = lines[lines.index('per-class AP, test:') + 1:][:20]
    assert [line.split()[0] for line in table] == voc.CLASSES
    assert [line.split()[1] for line in table] == ['-' if r['ap'] is None else f"{r['ap']:.2f}"
                                                   for r in record['per_class_ap']]


def test_predict_with_the_checkpoint_alone(voc_run, capsys):
    info, save = voc_run
    image = sorted(os.listdir(os.path.join(info['root'], 'VOCdevkit', 'VOC2007', 'JPEGImages')))[0]
    path = os.path.join(info['root'], 'VOCdevkit', 'VOC2007', 'JPEGImages', image)
    assert predict.main([path, '--resume', str(save / 'model_best.pth.tar'), '--no-download', '--threshold', '0',
                         '--top-k', '2']) == 0
    import voc
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == '=> settings from the checkpoint: image_size=64  pool_ratio=0.2  backbone=resnet18'
    assert lines[1] == path and len(lines) == 4
    assert all(line.split()[0] in voc.CLASSES for line in lines[2:])


def test_another_datasets_checkpoint_is_refused(voc_run, synthetic, capsys):
    _, save = voc_run
    info = synthetic('apparel', **TINY['apparel'])
    argv = [info['root'], '--image-label', info['image_label'], '-e', '--resume', str(save / 'model_best.pth.tar'),
            '-j', '0', '--device', 'cpu', '--no-download']
    assert demo_apparel_gcn.main(demo_apparel_gcn.DATASET, argv) == 2
    assert "classes (aeroplane, bicycle, bird, ...) are not this dataset's" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# --finetune

def test_finetune_loads_every_fitting_weight_and_starts_a_new_run(synthetic, tmp_path, capsys):
    info = synthetic('voc', **TINY['voc'])
    # another dataset's model: 10 classes, K = 4 label groups as VOC's (a COCO model has 80; fc1 is then 1 GB)
    source_model = official_checkpoint(str(tmp_path / 'coco.pth.tar'), 10, 0.4, 'resnet18',
                                       {'adj': np.ones((10, 10)), 'nums': np.full(10, 10.0)})
    argv = [info['root'], '-graph_file', info['graph_file'], '-word_file', info['word_file'], '--finetune',
            str(tmp_path / 'coco.pth.tar'), '--lr', '0', '--epochs', '1', '-b', '4', '--save-dir',
            str(tmp_path / 'out'), *QUICK]
    assert demo_voc2007_gcn.main(demo_voc2007_gcn.DATASET, argv) == 0
    source = dict(source_model.named_parameters())
    tuned = torch.load(tmp_path / 'out' / 'checkpoint.pth.tar', weights_only=True)
    assert tuned['epoch'] == 1   # a new run
    fitting = [k for k, v in source.items() if k in tuned['state_dict'] and tuned['state_dict'][k].shape == v.shape]
    assert {k for k in source if k not in fitting} == {'W', 'B', 'fc1.weight', 'fc2.weight', 'fc2.bias'}
    for k in fitting:   # --lr 0: every loaded parameter is unchanged
        assert torch.equal(tuned['state_dict'][k], source[k]), k
    out = capsys.readouterr().out
    n_fresh = sum(1 for k in tuned['state_dict'] if k in ('W', 'B', 'fc1.weight', 'fc2.weight', 'fc2.bias'))
    assert f'weights loaded, {n_fresh} start fresh (W, B, fc1.weight, fc2.weight, fc2.bias)' in out


def test_finetune_and_resume_together_is_a_usage_error(capsys):
    assert demo_voc2007_gcn.main(demo_voc2007_gcn.DATASET, ['somewhere', '--resume', 'a', '--finetune', 'b']) == 2
    assert 'give one of them' in capsys.readouterr().err
