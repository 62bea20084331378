"""Options beyond the official recipe: the weight average (EMA), the asymmetric loss, --sync-bn."""
import copy
import json
import math

import pytest
import torch
import torch.nn as nn

import distributed
import losses
from errors import UsageError
from tests.toy import (OverflowAt, ToyDataset, ToyMSRN, assert_equal_to_average, average_by_definition, make_engine,
                       make_optimizer, resumed, train_and_record)
from util import ModelEma, seed_everything


# ---------------------------------------------------------------------------------------------
# EMA

def test_ema_averages_parameters_and_batchnorm_statistics():
    """A few SGD steps in train mode: every floating entry of the state (BatchNorm's running mean and
    variance too) follows the recurrence from the weights at construction; num_batches_tracked is copied."""
    seed_everything(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).train()
    start = copy.deepcopy(model.state_dict())
    ema = ModelEma(model, decay=0.75)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    states = []
    for _ in range(4):
        loss = model(torch.randn(8, 3) * 2 + 1).square().mean()  # inputs of mean 1, variance 4: the statistics move
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema.update()
        states.append(copy.deepcopy(model.state_dict()))
    averaged, now = ema.module.state_dict(), model.state_dict()
    assert_equal_to_average(averaged, average_by_definition(start, states, 0.75))
    assert averaged['1.num_batches_tracked'] == now['1.num_batches_tracked'] == 4
    for k in ('0.weight', '1.running_mean', '1.running_var'):  # an average: neither the start nor a copy
        assert not torch.allclose(averaged[k], now[k]) and not torch.allclose(averaged[k], start[k]), k
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())


def test_ema_decay_must_be_a_fraction():
    with pytest.raises(ValueError, match=r'EMA decay must be in \(0, 1\)'):
        ModelEma(ToyMSRN(), 1.0)


def run(save_dir, epochs, resume=None, init_seed=0, **kwargs):
    seed_everything(init_seed)
    model = ToyMSRN()
    optimizer = make_optimizer(model)
    engine = make_engine(save_dir=save_dir, epochs=epochs, epoch_step=[2],
                         resume=resumed(model, resume) if resume else None, **kwargs)
    engine.learning(model, nn.MultiLabelSoftMarginLoss(), ToyDataset(30, seed=1), ToyDataset(10, seed=2), optimizer)
    return model, engine


def test_engine_updates_the_ema_after_every_optimizer_step(tmp_path, monkeypatch):
    model, engine, start, after_steps, made, updates = train_and_record(
        monkeypatch, tmp_path, nn.MultiLabelSoftMarginLoss())
    assert updates == made == len(after_steps) == 2 * 8
    assert_equal_to_average(engine.ema.module.state_dict(), average_by_definition(start, after_steps, 0.9))
    saved = torch.load(tmp_path / 'checkpoint.pth.tar', weights_only=True)
    assert all(torch.equal(v, saved['ema'][k]) for k, v in engine.ema.module.state_dict().items())


def test_engine_updates_the_ema_after_a_skipped_step_too(tmp_path, monkeypatch):
    """As timm's and ASL's training loops, the average is updated after every ``scaler.step`` call, also
    when GradScaler skipped the step for an overflow (the weights stay, the average moves towards them).
    A CPU GradScaler (the engine's is for CUDA) and one batch with an infinite gradient force a skip."""
    model, engine, start, after_steps, made, updates = train_and_record(
        monkeypatch, tmp_path, OverflowAt(3), scaler=torch.amp.GradScaler('cpu'))
    assert engine.scaler.get_scale() == 2.0 ** 15  # halved once: one step skipped
    assert updates == len(after_steps) == 2 * 8 and made == 2 * 8 - 1
    assert_equal_to_average(engine.ema.module.state_dict(), average_by_definition(start, after_steps, 0.9))


@pytest.mark.parametrize('forced, winner', [((50.0, 40.0, 60.0, 70.0, 65.0, 55.0), 'ema'),
                                            ((50.0, 40.0, 70.0, 60.0, 65.0, 55.0), 'model')])
def test_best_weights_are_whichever_scored_higher(tmp_path, monkeypatch, forced, winner):
    """Validation mAPs forced per epoch as (model, EMA): (50, 40), then (60, 70) or (70, 60), then (65, 55).
    model_best holds the weights that scored 70 in epoch 2 (the EMA's or the model's), as they were validated."""
    engine_type = type(make_engine())
    real, scores, validated = engine_type.validate, iter(forced), {}

    def validate(self, data_loader, model, criterion, label=None):
        results = real(self, data_loader, model, criterion, label)
        results['mAP'] = results['eval']['mAP'] = next(scores)
        validated[self.state['epoch'] + 1, label] = copy.deepcopy(model.state_dict())
        return results

    monkeypatch.setattr(engine_type, 'validate', validate)
    _, engine = run(tmp_path, 3, ema_decay=0.5)
    full = torch.load(tmp_path / 'checkpoint.pth.tar', weights_only=True)
    best = torch.load(tmp_path / 'model_best.pth.tar', weights_only=True)
    assert (best['epoch'], best['best_score'], best['best_weights']) == (2, 70.0, winner)
    assert full['best_score'] == engine.best_score == 70.0
    label = {'ema': 'val (EMA)', 'model': None}  # the validations' labels
    best_weights = validated[2, label[winner]]
    assert best['state_dict'].keys() == best_weights.keys()
    assert all(torch.equal(v, best_weights[k]) for k, v in best['state_dict'].items())
    loser = validated[2, label['model' if winner == 'ema' else 'ema']]
    assert not all(torch.equal(v, loser[k]) for k, v in best_weights.items())  # the two candidates differ
    log = [json.loads(line) for line in open(tmp_path / 'log.jsonl')]
    assert [r['best_mAP'] for r in log] == [50.0, 70.0, 70.0]
    record = json.load(open(tmp_path / 'eval_epoch002.json'))
    assert record['ema']['mAP'] == forced[3]
    # the per-class AP printed at the end is that of the weights that won
    won, lost = (record['ema'], record) if winner == 'ema' else (record, record['ema'])
    assert (engine.best_ap['epoch'], engine.best_ap['label']) == (2, 'val (EMA)' if winner == 'ema' else 'val')
    assert [100 * ap for ap in engine.best_ap['ap']] == pytest.approx([r['ap'] for r in won['per_class_ap']])
    assert [r['ap'] for r in won['per_class_ap']] != [r['ap'] for r in lost['per_class_ap']]


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


def test_loss_asl_is_the_papers_sum_over_b_times_c():
    """``--loss asl`` (published defaults: gamma- 4, gamma+ 0, clip 0.05, eps 1e-8) on a 2 x 2 example worked
    out by hand from L = -sum[y (1-p)^g+ log(p) + (1-y) p_m^g- log(1-p_m)], p_m = max(p - clip, 0), logs
    floored at eps: the paper's code returns L, ours L / (B * C)."""
    logits = torch.tensor([[0.0, -30.0], [0.0, -3.0]])
    targets = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    paper_sum = -(math.log(0.5)                      # positive, p = 0.5, (1 - p)^0 = 1
                  + math.log(1e-8)                   # positive, p = sigmoid(-30) ~ 9e-14: log floored at eps
                  + 0.45 ** 4 * math.log(1 - 0.45)   # negative, p = 0.5: p_m = 0.45
                  + 0.0)                             # negative, p = sigmoid(-3) ~ 0.047 < clip: p_m = 0
    assert paper_sum == pytest.approx(0.693147 + 18.420681 + 0.024515, abs=1e-5)
    loss = losses.build_loss('asl')(logits, targets)
    assert loss.item() == pytest.approx(paper_sum / 4, rel=1e-6)


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
