"""Spreading the network over devices and processes.

* `distributed`: the process group under torchrun, and what the training loop asks of it.
* `collectives`: autograd-aware all-gather and gather (one column per process).
* `columns`: the paper's two-GPU model parallelism, in one process or one column per process.
* `convert`: checkpoints between the whole network and its two columns.
* `placement`: where a run's network lives (one device, DDP, columns), checkpoints always grouped.
* `accounting`: bytes exchanged and held per device, as `alexnet info --parallel columns` shows.
"""
