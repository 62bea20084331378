"""Options beyond the official recipe: the weight average (EMA), the asymmetric loss, --sync-bn."""
import json

import pytest
import torch
import torch.nn as nn

import distributed
import losses
from errors import UsageError
from tests.toy import ToyDataset, ToyMSRN, make_engine, make_optimizer
from util import ModelEma, seed_everything


# ---------------------------------------------------------------------------------------------
# EMA

def test_ema_update_is_the_decayed_average_of_parameters_and_copies_buffers():
    seed_everything(0)
    model = ToyMSRN()
    ema = ModelEma(model, decay=0.75)
    start = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
        model.trunk[1].running_mean.add_(3.0)
        model.trunk[1].num_batches_tracked.add_(5)
    ema.update()
    now = model.state_dict()
    for name, _ in model.named_parameters():
        torch.testing.assert_close(ema.module.state_dict()[name], 0.75 * start[name] + 0.25 * now[name],
                                   rtol=1e-6, atol=1e-7)
    for name in ('trunk.1.running_mean', 'trunk.1.running_var', 'trunk.1.num_batches_tracked'):
        assert torch.equal(ema.module.state_dict()[name], now[name])
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())


def test_ema_decay_must_be_a_fraction():
    with pytest.raises(ValueError, match=r'EMA decay must be in \(0, 1\)'):
        ModelEma(ToyMSRN(), 1.0)


def run(save_dir, max_epochs, resume=None, init_seed=0, **kwargs):
    seed_everything(init_seed)
    model = ToyMSRN()
    optimizer = make_optimizer(model)
    engine = make_engine(save_dir=save_dir, max_epochs=max_epochs, epoch_step=[2], resume=resume, **kwargs)
    engine.learning(model, nn.MultiLabelSoftMarginLoss(), ToyDataset(30, seed=1), ToyDataset(10, seed=2), optimizer)
    return model, engine


def test_ema_resumes_bit_for_bit(tmp_path):
    straight, straight_engine = run(tmp_path / 'a', 3, ema_decay=0.9)
    run(tmp_path / 'b', 2, ema_decay=0.9)
    resumed, resumed_engine = run(tmp_path / 'b', 3, init_seed=7, ema_decay=0.9,
                                  resume=str(tmp_path / 'b' / 'checkpoint.pth.tar'))
    for a, b in ((straight, resumed), (straight_engine.ema.module, resumed_engine.ema.module)):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(x, y), name
    log = [json.loads(line) for line in open(tmp_path / 'b' / 'log.jsonl')]
    straight_log = [json.loads(line) for line in open(tmp_path / 'a' / 'log.jsonl')]
    assert [r['ema_val_mAP'] for r in log] == [r['ema_val_mAP'] for r in straight_log]


def test_best_weights_are_whichever_scored_higher(tmp_path, monkeypatch):
    """Validation mAPs forced per epoch: (model, EMA) = (50, 40), (60, 70), (65, 55): the best is the EMA of epoch 2."""
    forced = iter([50.0, 40.0, 60.0, 70.0, 65.0, 55.0])
    real = type(make_engine()).on_end_epoch

    def on_end_epoch(self, training, num_samples):
        real(self, training, num_samples)
        if not training:
            self.state['results']['mAP'] = self.state['results']['eval']['mAP'] = next(forced)

    monkeypatch.setattr(type(make_engine()), 'on_end_epoch', on_end_epoch)
    _, engine = run(tmp_path, 3, ema_decay=0.5)
    full = torch.load(tmp_path / 'checkpoint.pth.tar', weights_only=True)
    best = torch.load(tmp_path / 'model_best.pth.tar', weights_only=True)
    assert (best['epoch'], best['best_score'], best['best_weights']) == (2, 70.0, 'ema')
    assert full['best_score'] == engine.best_score == 70.0
    assert not torch.equal(best['state_dict']['bias'], full['state_dict']['bias'])   # epoch 2's EMA, not epoch 3
    log = [json.loads(line) for line in open(tmp_path / 'log.jsonl')]
    assert [r['best_mAP'] for r in log] == [50.0, 70.0, 70.0]
    assert json.load(open(tmp_path / 'eval_epoch002.json'))['ema']['mAP'] == 70.0


# ---------------------------------------------------------------------------------------------
# ASL

def asl_by_hand(logits, targets, gamma_neg, gamma_pos, clip, eps=1e-8):
    """The paper's formula, element by element."""
    total = 0.0
    for x, y in zip(logits.flatten().tolist(), targets.flatten().tolist()):
        p = 1 / (1 + torch.exp(torch.tensor(-x, dtype=torch.float64)).item())
        if y == 1:
            total += (1 - p) ** gamma_pos * torch.log(torch.tensor(max(p, eps), dtype=torch.float64)).item()
        else:
            p_m = max(p - clip, 0.0)
            total += p_m ** gamma_neg * torch.log(torch.tensor(max(1 - p_m, eps), dtype=torch.float64)).item()
    return -total / logits.numel()


@pytest.mark.parametrize('gamma_neg, gamma_pos, clip', [(4, 0, 0.05), (2, 1, 0.2), (0, 0, 0)])
def test_asl_matches_the_formula(gamma_neg, gamma_pos, clip):
    torch.manual_seed(0)
    logits = torch.randn(5, 7) * 3
    targets = (torch.rand(5, 7) < 0.4).float()
    loss = losses.AsymmetricLoss(gamma_neg, gamma_pos, clip)(logits, targets)
    assert loss.item() == pytest.approx(asl_by_hand(logits, targets, gamma_neg, gamma_pos, clip), rel=1e-5)


def test_asl_without_focusing_or_clip_is_binary_cross_entropy():
    torch.manual_seed(1)
    logits, targets = torch.randn(4, 6), (torch.rand(4, 6) < 0.5).float()
    loss = losses.AsymmetricLoss(0, 0, 0)(logits, targets)
    torch.testing.assert_close(loss, nn.functional.binary_cross_entropy_with_logits(logits, targets))


def test_asl_focusing_weights_carry_no_gradient():
    """d/dx of w·log(p) with w treated as a constant: the gradient of the log term times w."""
    logits = torch.tensor([[0.3, -1.2]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0]])
    losses.AsymmetricLoss(gamma_neg=4, gamma_pos=2, clip=0.05)(logits, targets).backward()
    p = torch.sigmoid(logits.detach())[0]
    w_pos, p_m = (1 - p[0]) ** 2, p[1] - 0.05
    expected = torch.tensor([-w_pos * (1 - p[0]), p_m ** 4 * p[1] * (1 - p[1]) / (1 - p_m)]) / 2
    torch.testing.assert_close(logits.grad[0], expected)


def test_build_loss_names():
    assert isinstance(losses.build_loss('multilabel-soft-margin'), nn.MultiLabelSoftMarginLoss)
    asl = losses.build_loss('asl', gamma_neg=3, clip=0.1)
    assert (asl.gamma_neg, asl.gamma_pos, asl.clip, asl.eps) == (3, 0.0, 0.1, 1e-8)
    with pytest.raises(ValueError, match='unknown loss'):
        losses.build_loss('focal')


# ---------------------------------------------------------------------------------------------
# --sync-bn

def test_sync_bn_in_one_process_changes_nothing(capsys):
    model = ToyMSRN()
    assert make_engine(sync_bn=True).wrap(model) is model
    assert isinstance(model.trunk[1], nn.BatchNorm2d) and 'nothing to synchronise' in capsys.readouterr().out


def test_sync_bn_needs_cuda_with_several_processes(monkeypatch):
    monkeypatch.setattr(distributed, 'get_world_size', lambda: 2)
    with pytest.raises(UsageError, match='--sync-bn needs CUDA'):
        make_engine(sync_bn=True).wrap(ToyMSRN())
