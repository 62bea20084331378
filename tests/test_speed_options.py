"""The GPU options users expect, checked on the CPU where PyTorch allows it: bfloat16 autocast,
channels-last, torch.compile (and its fallback), the choice of label attention."""
import functools
import json

import pytest
import torch
import torch.nn as nn
from torch._dynamo.backends.common import aot_autograd

import demo_custom_gcn
import models
from tests.helpers import small_model
from tests.toy import ToyDataset, ToyMSRN, make_engine, make_optimizer
from util import seed_everything


def toy_run(save_dir=None, hooks=(), **engine_kwargs):
    seed_everything(0)
    model = ToyMSRN()
    for hook in hooks:
        model.trunk[0].register_forward_hook(hook)
    engine = make_engine(save_dir=save_dir, epochs=1, **engine_kwargs)
    engine.learning(model, nn.MultiLabelSoftMarginLoss(), ToyDataset(12, seed=1), ToyDataset(6, seed=2),
                    make_optimizer(model))
    return model, engine


def test_bfloat16_autocast_on_the_cpu_needs_no_gradient_scaling():
    convolved = []
    model, engine = toy_run(amp=True, amp_dtype='bfloat16',
                            hooks=[lambda module, inputs, output: convolved.append(output.dtype)])
    assert set(convolved) == {torch.bfloat16} and not engine.scaler.is_enabled()
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_channels_last_images_give_the_same_training():
    plain, _ = toy_run()
    seed_everything(0)
    model, engine = toy_run(channels_last=True)
    assert engine.state['images'].is_contiguous(memory_format=torch.channels_last)
    for (name, a), b in zip(plain.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


@pytest.fixture
def fresh_compile(monkeypatch):
    """Each test compiles (or fails to) anew: the process-wide state of models.compiled_trunk reset."""
    monkeypatch.setattr(models, '_compiled_call', None)
    monkeypatch.setattr(models, '_backward_compiled', False)


def test_compiled_trunk_gives_the_eager_features_and_each_copy_its_own(fresh_compile, monkeypatch):
    """Compiled (here with the 'eager' backend, to stay fast): the same features as the eager trunk,
    and a copy of the model with other weights (the EMA) computes with its own weights."""
    calls = []
    real = torch.compile

    def compile_(fn, **options):
        calls.append(fn)
        return real(fn, backend='eager')
    monkeypatch.setattr(torch, 'compile', compile_)
    model, image = small_model().eval(), torch.randn(2, 3, 64, 64)
    copy = small_model().eval()
    with torch.no_grad():
        for p in copy.parameters():
            p.add_(0.01)
        expected = [model.resnet_101(image), copy.resnet_101(image)]
        model.compile_trunk = copy.compile_trunk = True
        got = [model.features(image), copy.features(image)]
    assert len(calls) == 1
    for want, have in zip(expected, got):
        for a, b in zip(want, have):
            torch.testing.assert_close(a, b)


def test_a_compile_failure_is_one_warning_and_eager_mode(fresh_compile, monkeypatch, capsys):
    def broken(fn, **options):
        def run(*args):
            raise RuntimeError('no C compiler found\nmore detail')
        return run
    monkeypatch.setattr(torch, 'compile', broken)
    model = small_model().eval().train()
    model.compile_trunk = True
    words = torch.randn(2, 5, 300)
    for _ in range(2):   # a training step, twice: one warning only
        logits, group_loss = model(torch.randn(2, 3, 64, 64), words)
        (logits.sum() + group_loss).backward()
    assert capsys.readouterr().err.splitlines() == [
        'warning: torch.compile failed (RuntimeError: no C compiler found); the trunk runs eagerly']


def test_a_failure_to_compile_the_backward_is_one_warning_and_eager_mode(fresh_compile, monkeypatch, capsys):
    """torch.compile compiles the backward at the first backward pass: a compiler that fails only
    there still gives one warning, at the first forward pass, and eager training steps."""
    def no_backward(graph, example_inputs):
        raise RuntimeError('backward not supported')
    backend = aot_autograd(fw_compiler=lambda graph, example_inputs: graph, bw_compiler=no_backward)
    monkeypatch.setattr(torch, 'compile', functools.partial(torch.compile, backend=backend))
    eager, model = small_model().eval().train(), small_model().eval().train()
    model.compile_trunk = True
    words, images = torch.randn(2, 5, 300), torch.randn(2, 3, 64, 64)
    logits, group_loss = model(images, words)
    assert capsys.readouterr().err.splitlines() == [
        'warning: torch.compile failed (RuntimeError: backward not supported); the trunk runs eagerly']
    (logits.sum() + group_loss).backward()
    logits, group_loss = model(images, words)   # a second training step: no second warning
    (logits.sum() + group_loss).backward()
    assert capsys.readouterr().err == ''
    logits, group_loss = eager(images, words)
    (2 * (logits.sum() + group_loss)).backward()  # two steps' gradients, accumulated
    for (name, a), b in zip(eager.named_parameters(), model.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


@pytest.mark.slow
def test_speed_options_through_the_demo_script_evaluate_the_same(custom_run, tmp_path, monkeypatch):
    """--attention plain / chunked, --channels-last and --compile (with the 'eager' backend) give
    the evaluation of the default run, up to float rounding."""
    monkeypatch.setattr(models, '_compiled_call', None)
    monkeypatch.setattr(models, '_backward_compiled', False)
    monkeypatch.setattr(torch, 'compile', functools.partial(torch.compile, backend='eager'))
    checkpoint = str(custom_run[1] / 'model_best.pth.tar')
    scores = {}
    for name, flags in {'default': [], 'plain': ['--attention', 'plain'], 'chunked': ['--attention', 'chunked'],
                        'channels-last': ['--channels-last'], 'compile': ['--compile']}.items():
        out = tmp_path / name
        assert demo_custom_gcn.main(demo_custom_gcn.DATASET, ['-e', '--resume', checkpoint, '-j', '0', '--device',
                                                              'cpu', '--save-dir', str(out), *flags]) == 0
        scores[name] = json.load(open(out / 'eval_model_best.json'))
    for name, result in scores.items():
        assert result['mAP'] == pytest.approx(scores['default']['mAP'], abs=1e-3), name
        assert result['loss'] == pytest.approx(scores['default']['loss'], rel=1e-4), name
