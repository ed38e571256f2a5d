"""Custom parts written in plain PyTorch (no specc import), used by custom_parts.spec."""

import torch
import torch.nn as nn
import torch.nn.functional as F


class CustomConv2d(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding)

    def forward(self, x):
        return self.conv(x)


class CustomCrossEntropyLoss(nn.Module):
    def forward(self, logits, targets):
        log_probs = F.log_softmax(logits, dim=1)
        return -log_probs.gather(1, targets.unsqueeze(1)).mean()


class CustomSGD(torch.optim.Optimizer):
    def __init__(self, params, lr=0.01):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.data.sub_(group["lr"] * p.grad)
