"""A plugin layer whose forward branches on a tensor's values: it runs, and `check` passes,
but torch.export cannot trace it."""

import torch.nn as nn


class SignFlip(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x
        return -x
