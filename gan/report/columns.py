"""What the report shows: the curves, the final values, the primary metric and the test level.

The metric names are their producers' (``gan.trainer``, ``gan.quality``); this module only chooses
among them.
"""

from __future__ import annotations

from gan.quality import CLASS_KL, CLASSES_COVERED, FCD, KCD, KCD_STD
from gan.trainer import ACC_D, ACC_G, D_G_Z, D_X, LOSS_D, LOSS_G

# The training metrics worth a panel: the report's curves and the W&B dashboard's training section.
TRAINING_CURVES = (LOSS_D, LOSS_G, ACC_D, ACC_G, D_X, D_G_Z)
CURVES = (*TRAINING_CURVES, FCD, KCD, CLASS_KL)
# summary.csv's final-value columns: the first five in their original order, then the newer ones.
FINALS = (LOSS_D, LOSS_G, ACC_D, ACC_G, FCD)
MORE_FINALS = (KCD, KCD_STD, CLASS_KL, CLASSES_COVERED, D_X, D_G_Z)
PRIMARY = FCD  # lower is better; the verdict is given on it when present (KCD: a second one)
TRAIN_FINALS = (ACC_D, ACC_G, LOSS_D, LOSS_G)  # report.md's order
COVERAGE = (CLASS_KL, CLASSES_COVERED, D_X, D_G_Z)
LABELS = {D_X: "D(x)", D_G_Z: "D(G(z))", CLASSES_COVERED: "classes covered"}
PROBABILITIES = (D_X, D_G_Z)  # D's mean outputs: 0.5 is where D cannot tell
ALPHA = 0.05
