"""Spreading the network over devices.

* `columns`: the paper's two-GPU model parallelism (`TwoDeviceAlexNet`, one process with two
  devices; `DistributedColumnAlexNet`, one column per torchrun process) and checkpoint conversion
  (`split_state_dict`, `merge_state_dicts`).
* `accounting`: bytes moved and held per device for one device, two columns, data parallelism and
  the 2014 hybrid (`column_accounting`), as `alexnet info --parallel columns` shows.
* `distributed`: running under torchrun: `DistributedContext` (what the training loop asks about
  ranks, devices and reductions) and small helpers (`init_from_env`, `is_main`, `barrier`,
  `cleanup`, `all_reduce_sum`, `broadcast_object`).

Names are imported on first use, so `import alexnet.parallel.<module>` stays cheap.
"""

from __future__ import annotations

import importlib

_NAMES = {
    "Column": "columns", "TwoDeviceAlexNet": "columns", "DistributedColumnAlexNet": "columns",
    "split_state_dict": "columns", "merge_state_dicts": "columns", "all_gather_cat": "columns",
    "gather_cat": "columns", "named_optimizer_state": "columns", "load_named_optimizer_state": "columns",
    "column_accounting": "accounting", "format_accounting": "accounting",
    "init_from_env": "distributed", "is_main": "distributed", "barrier": "distributed",
    "cleanup": "distributed", "all_reduce_sum": "distributed", "broadcast_object": "distributed",
    "DistributedContext": "distributed",
}


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_NAMES)
