"""Resume, in one place: a run stopped and resumed ends where an uninterrupted one ends (weights,
momentum, weight average, GradScaler, random generators, log), the settings a checkpoint brings
(the recipe, never the invocation) and what is printed about them, and resume's bad input."""
import argparse
import json
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn as nn

import checkpoint as ckpt
import cli
import demo_apparel_gcn
import demo_custom_gcn
import demo_voc2007_gcn
import run
from checkpoint import load_checkpoint
from errors import CheckpointError
from models import MSRN
from tests.helpers import assert_one_line_error, custom_argv, file_identity, run_main
from tests.toy import ToyDataset, evaluate_once, make_engine, make_optimizer, resumed, toy_run
from util import seed_everything

GRAPH = {'adj': np.array([[0, 5], [4, 0]]), 'nums': np.array([10, 8])}


def parse(argv, demo=demo_voc2007_gcn):
    return cli.parse_args(cli.get_args_parser(demo.DATASET), argv)


# ---------------------------------------------------------------------------------------------
# The engine: a resumed run ends bit for bit where an uninterrupted one ends

def test_resume_reaches_the_same_weights_bit_for_bit(tmp_path):
    straight, straight_opt, _, _ = toy_run(tmp_path / 'a', epochs=3)
    toy_run(tmp_path / 'b', epochs=2)
    # A new "process": other seed (other init, other augmentation draws) unless the RNG is restored.
    resumed, resumed_opt, engine, _ = toy_run(tmp_path / 'b', epochs=3, init_seed=99,
                                          resume=str(tmp_path / 'b' / 'checkpoint.pth.tar'))
    assert engine.start_epoch == 2
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    for a, b in zip(straight_opt.state_dict()['state'].values(), resumed_opt.state_dict()['state'].values()):
        assert torch.equal(a['momentum_buffer'], b['momentum_buffer'])
    log_a = [json.loads(line) for line in open(tmp_path / 'a' / 'log.jsonl')]
    log_b = [json.loads(line) for line in open(tmp_path / 'b' / 'log.jsonl')]
    assert [r['val_mAP'] for r in log_a] == [r['val_mAP'] for r in log_b]
    assert log_b[2]['lr'] == pytest.approx([0.001, 0.01])  # the schedule continues across the resume


def test_resume_of_a_missing_or_corrupt_file_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match='not found'):
        toy_run(tmp_path / 'out', epochs=1, resume=str(tmp_path / 'nope.pth.tar'))
    (tmp_path / 'bad.pth.tar').write_bytes(b'not a checkpoint')
    with pytest.raises(CheckpointError, match='cannot read') as info:
        toy_run(tmp_path / 'out', epochs=1, resume=str(tmp_path / 'bad.pth.tar'), evaluate=True)
    assert '\n' not in str(info.value)
    assert not (tmp_path / 'out').exists()  # nothing trained, nothing written


def test_ema_resumes_bit_for_bit(tmp_path):
    straight, _, straight_engine, _ = toy_run(tmp_path / 'a', 3, ema_decay=0.9)
    toy_run(tmp_path / 'b', 2, ema_decay=0.9)
    resumed, _, resumed_engine, _ = toy_run(tmp_path / 'b', 3, init_seed=7, ema_decay=0.9,
                                            resume=str(tmp_path / 'b' / 'checkpoint.pth.tar'))
    for a, b in ((straight, resumed), (straight_engine.ema.module, resumed_engine.ema.module)):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(x, y), name
    log = [json.loads(line) for line in open(tmp_path / 'b' / 'log.jsonl')]
    straight_log = [json.loads(line) for line in open(tmp_path / 'a' / 'log.jsonl')]
    assert [r['ema_val_mAP'] for r in log] == [r['ema_val_mAP'] for r in straight_log]


def msrn_run(save_dir, epochs, resume=None, init_seed=0, evaluate=False):
    seed_everything(init_seed)
    model = MSRN(2, 0.5, 'resnet18', GRAPH)
    engine = make_engine(save_dir=save_dir, epochs=epochs, epoch_step=[1], image_size=64,
                         resume=resumed(model, resume) if resume else None, classes=['cat', 'dog'])
    val = ToyDataset(6, seed=2, size=72, num_classes=2)
    if evaluate:
        return model, evaluate_once(engine, model, val)
    score = engine.learning(model, nn.MultiLabelSoftMarginLoss(), ToyDataset(10, seed=1, size=72, num_classes=2),
                            val, make_optimizer(model, lr=0.01))
    return model, score


@pytest.mark.slow
def test_msrn_trains_resumes_exactly_and_evaluates_its_checkpoint(tmp_path):
    straight, _ = msrn_run(tmp_path / 'a', epochs=2)
    msrn_run(tmp_path / 'b', epochs=1)
    resumed, _ = msrn_run(tmp_path / 'b', epochs=2, init_seed=1, resume=str(tmp_path / 'b' / 'checkpoint.pth.tar'))
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name

    load_checkpoint(straight, str(tmp_path / 'a' / 'checkpoint.pth.tar'))  # the model's strict loader reads ours
    _, score = msrn_run(tmp_path / 'e', epochs=2, init_seed=2, evaluate=True,
                        resume=str(tmp_path / 'a' / 'checkpoint.pth.tar'))
    last = json.loads(open(tmp_path / 'a' / 'log.jsonl').readlines()[-1])
    assert score == pytest.approx(last['val_mAP'], abs=1e-9)

# ---------------------------------------------------------------------------------------------
# The settings a checkpoint brings: the recipe, never the invocation

def other_value(action):
    """Command-line tokens that give ``action`` a value other than its default."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return [action.option_strings[0]]
    if isinstance(action, argparse.BooleanOptionalAction):
        return [action.option_strings[0] if action.default is not True else action.option_strings[1]]
    if action.choices:
        value = next(str(c) for c in action.choices if c != action.default)
    elif action.type is int:
        value = str((action.default or 0) + 3)
    elif action.type is float:
        value = str((action.default or 0) + 0.25)
    elif action.default is not None and isinstance(action.default, list):
        value = '7,9'
    else:
        value = '/somewhere/else'
    return [value] if not action.option_strings else [action.option_strings[0], value]


def test_every_recipe_flag_survives_a_checkpoint_and_no_invocation_flag_is_restored(tmp_path, capsys):
    parser = cli.get_args_parser(demo_apparel_gcn.DATASET)   # with a loader flag of its own
    recipe = cli.recipe_names(parser)
    actions = {a.dest: a for a in parser._actions if a.dest != 'help'}
    assert {'data', 'image_size', 'image_label', 'pool_ratio', 'backbone', 'epochs', 'lr', 'seed'} <= set(recipe)
    argv = [token for dest in recipe for token in other_value(actions[dest])]
    made, given = cli.parse_args(parser, argv)
    assert given == set(recipe)   # every recipe flag got a value of its own
    torch.save(ckpt.RunSettings(args=run.recipe_values(made, recipe)).entries(), tmp_path / 'c.pth.tar')
    stored = ckpt.RunSettings.read(ckpt.read_checkpoint(str(tmp_path / 'c.pth.tar'))).args

    resumed, given = cli.parse_args(parser, [])
    run.restore_settings(resumed, given, stored, recipe)
    for dest in recipe:
        assert getattr(resumed, dest) == getattr(made, dest) != actions[dest].default, dest

    # a checkpoint holding a value for every flag (as older ones stored them all): the invocation stays
    invocation = [dest for dest in actions if dest not in recipe]
    assert {'resume', 'evaluate', 'device', 'workers', 'save_dir', 'tensorboard', 'attention'} <= set(invocation)
    everything = dict(stored, **{dest: f'stored {dest}' for dest in invocation})
    fresh, given = cli.parse_args(parser, ['DIR'])
    defaults = {dest: getattr(fresh, dest) for dest in invocation}
    run.restore_settings(fresh, given, everything, recipe)
    assert {dest: getattr(fresh, dest) for dest in invocation} == defaults
    assert fresh.data == 'DIR'   # given: kept, and said
    assert "=> --data DIR given; the checkpoint was made with /somewhere/else" in capsys.readouterr().out


def test_restore_settings_takes_what_was_not_given(capsys):
    args, given = parse(['data/voc', '--lr', '0.5', '--device', 'cpu'])
    stored = {'lr': 0.1, 'image_size': 64, 'backbone': 'resnet18', 'epoch_step': [1], 'device': 'cuda',
              'resume': 'x.pth.tar', 'save_dir': '/no/such/folder', 'unknown_flag': 3, 'tensorboard': False}
    run.restore_settings(args, given, stored, cli.recipe_names(cli.get_args_parser(demo_voc2007_gcn.DATASET)))
    assert (args.lr, args.image_size, args.backbone, args.epoch_step) == (0.5, 64, 'resnet18', [1])
    # what to do now is never taken from a checkpoint
    assert (args.device, args.resume, args.tensorboard) == ('cpu', '', True)
    assert args.save_dir.endswith(os.path.join('checkpoint', 'voc2007'))   # never the stored folder
    out = capsys.readouterr().out.splitlines()
    assert out == ['=> --lr 0.5 given; the checkpoint was made with 0.1',
                   '=> settings from the checkpoint: image_size=64  backbone=resnet18  epoch_step=1']

# ---------------------------------------------------------------------------------------------
# Through the demo scripts: the checkpoint brings every setting

def test_resume_with_the_checkpoint_alone_continues_the_same_run(voc_run, tmp_path, capsys):
    _, save = voc_run
    run = tmp_path / 'run'
    # A copied run goes on in its copy and never touches the original. The copy is of hard links, so
    # a write into a file rather than onto a new one (atomically renamed) would change the original.
    shutil.copytree(save, run, copy_function=os.link)
    original = {name: file_identity(save / name) for name in os.listdir(save)}
    checkpoint = run / 'checkpoint.pth.tar'
    events = {name: (run / name).read_bytes() for name in os.listdir(run) if name.startswith('events.out.tfevents.')}
    argv = ['--resume', str(checkpoint), '--epochs', '3', '--no-download', '-j', '0', '--device', 'cpu',
            '--no-tensorboard']
    assert demo_voc2007_gcn.main(demo_voc2007_gcn.DATASET, argv) == 0
    out = capsys.readouterr().out
    assert '=> --epochs 3 given; the checkpoint was made with 2' in out
    assert 'image_size=64' in out and 'loss=asl' in out and 'ema_decay=0.9' in out
    assert 'Epoch 3/3  lr trunk 0.001 head 0.01  train loss (asl) ' in out and ' val (EMA) mAP ' in out
    assert 'test (EMA): 8 images' in out
    assert len(events) == 1 and events == {name: (run / name).read_bytes()   # --no-tensorboard: none written
                                           for name in os.listdir(run) if name.startswith('events.out.tfevents.')}
    resumed = torch.load(checkpoint, weights_only=True)
    assert resumed['epoch'] == 3 and resumed['args']['lr'] == 0.1
    assert [json.loads(line)['epoch'] for line in open(run / 'log.jsonl')] == [1, 2, 3]
    assert {name: file_identity(save / name) for name in os.listdir(save)} == original


@pytest.mark.slow
def test_resume_applies_a_changed_lr_and_says_so(voc_run, tmp_path, capsys):
    _, save = voc_run
    lrs = sorted(group['lr'] for group in torch.load(save / 'checkpoint.pth.tar', weights_only=True)['optimizer']
                 ['param_groups'])
    assert lrs == pytest.approx([0.001, 0.01])   # epoch 2 of --lr 0.1, x0.1 from epoch 1; trunk at lr x 0.1
    argv = ['--resume', str(save / 'checkpoint.pth.tar'), '--epochs', '3', '--lr', '0.01', '--save-dir',
            str(tmp_path), '--no-download', '-j', '0', '--device', 'cpu', '--no-tensorboard']
    assert demo_voc2007_gcn.main(demo_voc2007_gcn.DATASET, argv) == 0
    assert '=> --lr 0.01 given; the checkpoint was made with 0.1' in capsys.readouterr().out
    resumed = torch.load(tmp_path / 'checkpoint.pth.tar', weights_only=True)
    assert resumed['epoch'] == 3 and resumed['args']['lr'] == 0.01
    assert sorted(g['lr'] for g in resumed['optimizer']['param_groups']) == pytest.approx([0.0001, 0.001])


@pytest.mark.slow
def test_resume_with_an_optimizer_state_that_does_not_fit_is_one_line(voc_run, tmp_path):
    _, save = voc_run
    checkpoint = torch.load(save / 'checkpoint.pth.tar', weights_only=True)
    checkpoint['optimizer']['param_groups'].pop()  # as from an optimizer set up differently
    torch.save(checkpoint, tmp_path / 'unfit.pth.tar')
    result = run_main('demo_voc2007_gcn.py', '--resume', tmp_path / 'unfit.pth.tar', '--epochs', '3', '--save-dir',
                      tmp_path / 'out', '--no-download', '-j', '0', '--device', 'cpu')
    assert_one_line_error(result, 'optimizer state does not fit the optimizer')
    assert not (tmp_path / 'out' / 'checkpoint.pth.tar').exists()


@pytest.mark.slow
def test_a_bfloat16_cpu_run_trains_two_epochs_and_resumes_bit_for_bit(synthetic, tmp_path):
    info = synthetic('custom', n_train=16, n_val=8)
    bf16 = ('--amp-dtype', 'bfloat16')   # turns --amp on
    assert demo_custom_gcn.main(demo_custom_gcn.DATASET, custom_argv(info['root'], tmp_path / 'a', '--epochs', '2',
                                                                     *bf16)) == 0
    assert demo_custom_gcn.main(demo_custom_gcn.DATASET, custom_argv(info['root'], tmp_path / 'b', '--epochs', '1',
                                                                     *bf16)) == 0
    assert demo_custom_gcn.main(demo_custom_gcn.DATASET, ['--resume', str(tmp_path / 'b' / 'checkpoint.pth.tar'),
                                                          '--epochs', '2', '-j', '0', '--device', 'cpu']) == 0
    a, b = (torch.load(tmp_path / run / 'checkpoint.pth.tar', weights_only=True) for run in 'ab')
    assert a['args']['amp'] is True and b['args']['amp_dtype'] == 'bfloat16' and b['epoch'] == 2
    for key, value in a['state_dict'].items():
        assert torch.equal(value, b['state_dict'][key]), key
    log = [json.loads(line) for line in open(tmp_path / 'b' / 'log.jsonl')]
    assert [r['val_mAP'] for r in log] == [json.loads(line)['val_mAP'] for line in open(tmp_path / 'a' / 'log.jsonl')]


def test_missing_resume_is_an_error_not_a_fresh_start(tmp_path, synthetic):
    info = synthetic('voc')
    result = run_main('demo_voc2007_gcn.py', info['root'], '-word_file', info['word_file'], '-graph_file',
                        info['graph_file'], '--backbone', 'resnet18', '-e', '--resume', tmp_path / 'nope.pth.tar')
    assert_one_line_error(result, r'nope.pth.tar: checkpoint not found')
