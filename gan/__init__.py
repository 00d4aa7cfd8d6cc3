"""Weight-initialization ablations for GANs.

Rooms: ``nets`` (architectures), ``init`` (activation-aware initialization), ``data`` (datasets as
in-memory tensors), ``trainer`` (the training loop), ``tracking`` (W&B and metrics.jsonl),
``config`` (typed run configuration), ``run`` (one training run end to end).
"""

from gan.errors import UserError

__all__ = ["UserError"]
