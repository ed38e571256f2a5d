"""specc's benchmark suite: ``python -m benchmarks [--quick] [--only NAME] [--out PATH]``.

The sections, each a module with one ``run(ctx) -> list[Row]`` function:

- ``modules``: forward+backward+optimizer step of the tutorial CIFAR ``Net`` and the MNIST
  ``ConvNet``, interpreted (``specc.build``) vs generated (``specc.compile``) vs hand-written,
  eager and ``torch.compile``, plus aten op counts per step;
- ``e2e``: ``specc run specs/cifar10.spec`` against the tutorial's own training loop on the
  same generated CIFAR-format files, images per second over whole epochs;
- ``compiler``: ``check`` / ``build`` / ``compile`` wall time for generated specs of 10 to
  10,000 layers and for a 20-billion-parameter spec;
- ``cli``: ``specc --help`` / ``--version`` / ``check`` start-up against ``import torch``;
- ``lsp``: ``specc lsp`` over stdio, from an edit of a 231-line spec to its diagnostics;
- ``startup``: ``specc run specs/cifar10.spec`` up to its first training step (as a whole
  process, ended there by ``benchmarks/first_step.py``) against ``import torch, torchvision``.

Outside the suite, ``python -m benchmarks.step_kernels`` times the CIFAR net's batch-4 step
under each of the runner's kernel choices, alternating in chunks (``--timeline`` shows this
host's quiet and slow states), and ``python -m benchmarks.thread_rule`` times one intra-op
thread against two for small steps, in worker processes taking turns (the measurements
behind ``specc.training.kernels.ONE_THREAD_MAX_FLOPS``).

Every comparison is paired: after a warm-up, the variants run in alternating rounds
(A B C, B C A, ...) and each round yields one ratio, so load from other processes on this
shared machine hits both sides of a ratio alike. Rows report the median ratio, its
min-max over the rounds, and PASS/FAIL against the target of the issue.
"""
