"""Classification losses on logits [B, C] and targets {0, 1} [B, C]; MSRN's group loss is added
by the engine. ``build_loss`` maps the ``--loss`` names to them."""
import inspect

import torch
import torch.nn as nn


class AsymmetricLoss(nn.Module):
    """The asymmetric loss (Ridnik et al., "Asymmetric Loss For Multi-Label Classification", ICCV 2021).

    With p = sigmoid(logit): a positive contributes (1 - p)^gamma_pos · log(p); a negative uses
    the shifted probability p_m = max(p - clip, 0) and contributes p_m^gamma_neg · log(1 - p_m).
    As in the paper's implementation, the focusing weights are computed without gradient and the
    logarithms are floored at ``eps``. The loss is the negative mean over images and classes
    (the paper's code sums; a sum is this mean times B·C, only a rescaled learning rate).
    """

    def __init__(self, gamma_neg=4.0, gamma_pos=0.0, clip=0.05, eps=1e-8):
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps

    def forward(self, logits, targets):
        targets = targets.float()
        p = torch.sigmoid(logits.float())                                  # (B, C)
        q = 1 - p                                                           # 1 - p_m, the negatives' term
        if self.clip:
            q = (q + self.clip).clamp(max=1)
        log_likelihood = targets * p.clamp(min=self.eps).log() + (1 - targets) * q.clamp(min=self.eps).log()
        if self.gamma_neg or self.gamma_pos:
            with torch.no_grad():
                miss = 1 - (targets * p + (1 - targets) * q)                # (1 - p) or p_m
                gamma = targets * self.gamma_pos + (1 - targets) * self.gamma_neg
                weight = miss.pow(gamma)
            log_likelihood = log_likelihood * weight
        return -log_likelihood.mean()


LOSSES = ('multilabel-soft-margin', 'asl')
ASL_DEFAULTS = {name: parameter.default for name, parameter in
                inspect.signature(AsymmetricLoss).parameters.items() if name != 'eps'}


def build_loss(name, **asl):
    """The classification loss called ``name`` (one of ``LOSSES``); ``asl``: AsymmetricLoss's
    gamma_neg, gamma_pos and clip."""
    if name == 'multilabel-soft-margin':
        return nn.MultiLabelSoftMarginLoss()   # the official loss
    if name == 'asl':
        return AsymmetricLoss(**asl)
    raise ValueError(f'unknown loss {name!r}; choose one of {", ".join(LOSSES)}')
