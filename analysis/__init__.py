"""Analysis of scaling studies: run folders → tidy table → fits → plots and reports.

Reads only what ``docs/run_folder.md`` specifies; never imports the trainer (probing a
checkpoint, ``analysis.early_layers.probe_runs``, loads ``gat.probe`` when called, and only then).
``analysis.load`` builds the table (training compute counted by ``contract.flops``) or reads a
study's committed one, ``analysis.fit`` fits power laws with bootstrap CIs and the compute
frontier, ``analysis.plots`` is the house style, ``analysis.paths`` where the notebooks and the
command lines read and write. One library per question: ``analysis.scaling`` (final metric vs
size, the compute frontier, the report), ``analysis.lr_transfer`` (the optimal base LR per
width), ``analysis.early_layers`` (§5.1, MNG and early-layer use), ``analysis.instability``
(§5.2, with the coordinate check and the LR rules' predictions; both reports are
``analysis.report.Report``s over ``analysis.traces``' per-line tables) and
``analysis.compute_optimal`` with ``analysis.candidates`` and ``analysis.recommend`` (the isoFLOP
forecast). No module here imports ``sweeps``: what a study planned is read from its manifest.
The command lines only parse, call those and print: ``python -m analysis.plot_scaling`` /
``python -m analysis.plot_lr_transfer`` / ``python -m analysis.ablations`` /
``python -m analysis.forecast``.
"""
