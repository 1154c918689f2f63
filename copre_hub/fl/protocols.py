"""Named readings of the paper's downstream protocol (section 2.5), as settings over ``DownstreamConfig``'s defaults.

``literal`` is the text as read: 5 local mini-batch steps a round of plain SGD at lr 1e-3. It does not reproduce
the paper's own random-weights row (about 40% against 75.32 on CIFAR-100), so ``benchmarks/calibrate.py`` measures
other readings against that row, under a rule fixed before any run: the cheapest reading whose mean over two
validation tasks (seed 1, never the reported tasks) is within 3 points of 75.32. ``calibrated`` is the one it
selected (``benchmarks/results/calibrate-cifar100.md``): 5 local epochs a round of SGD at lr 1e-2 with momentum 0.9,
73.64 from random timm ``resnet18`` weights (72.18 and 75.11), at 8 times the text's local steps. Kept free of heavy
imports: the CLI lists these names before torch is loaded.
"""

from __future__ import annotations

PROTOCOLS: dict[str, dict[str, object]] = {
    "literal": {},
    "calibrated": {"local_epochs": 5, "lr": 1e-2, "momentum": 0.9},
}
