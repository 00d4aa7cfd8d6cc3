"""What the report shows: the curves, the final values, the primary metric and the test level."""

from __future__ import annotations

# The training metrics worth a panel: the report's curves and the W&B dashboard's training section.
TRAINING_CURVES = (
    "train/loss_D",
    "train/loss_G",
    "train/acc_D",
    "train/acc_G",
    "train/D_x",
    "train/D_G_z",
)
CURVES = (
    *TRAINING_CURVES,
    "eval/fcd",
    "eval/kcd",
    "eval/class_kl",
)
# summary.csv's final-value columns: the first five in their original order, then the newer ones.
FINALS = ("train/loss_D", "train/loss_G", "train/acc_D", "train/acc_G", "eval/fcd")
MORE_FINALS = (
    "eval/kcd",
    "eval/kcd_std",
    "eval/class_kl",
    "eval/classes_covered",
    "train/D_x",
    "train/D_G_z",
)
PRIMARY = "eval/fcd"  # lower is better; the verdict is given on it when present
KCD = "eval/kcd"  # lower is better, unbiased: a second verdict beside FCD's
TRAIN_FINALS = ("train/acc_D", "train/acc_G", "train/loss_D", "train/loss_G")  # report.md's order
COVERAGE = ("eval/class_kl", "eval/classes_covered", "train/D_x", "train/D_G_z")
LABELS = {"train/D_x": "D(x)", "train/D_G_z": "D(G(z))", "eval/classes_covered": "classes covered"}
ALPHA = 0.05
