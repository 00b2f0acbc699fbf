"""gatscale's contract: what the trainer, the sweep engine and the analysis agree on, without torch.

The run folder's files (names, readers, writers, the state machine, the clock), the run config
and its schema, the size grammar, the FLOP count, the metric names, the errors and the CLI
helpers. `gat/` trains through it, `sweeps/` plans and submits through it, `analysis/` reads
through it; none of them opens a run-folder file by name.
"""

__version__ = "0.1.0"
