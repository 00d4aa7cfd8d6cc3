"""Weight-initialization ablations for GANs.

Rooms: ``nets`` (architectures), ``init`` (activation-aware initialization), ``trace`` (what each
layer feeds), ``data`` (datasets as in-memory tensors), ``trainer`` (the training loop),
``tracking`` (W&B and metrics.jsonl), ``config`` (typed run configuration), ``run`` (one training
run end to end).

The init rule in one call: ``records = gan.initialize(model, "he_xavier", seed=0)``, then
``print(gan.init_table(records))``.
"""

from __future__ import annotations

from typing import Any

from gan.errors import UserError

__all__ = ["UserError", "init_table", "initialize"]


def __getattr__(name: str) -> Any:
    # Loaded on first use: gan.init imports torch, which `import gan` alone should not pay for.
    if name in ("initialize", "init_table"):
        from gan import init_call

        return getattr(init_call, name)
    raise AttributeError(f"module 'gan' has no attribute {name!r}")
