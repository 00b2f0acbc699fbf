"""Analysis of scaling studies: run folders → tidy table → fits → plots and reports.

Reads only what ``docs/run_folder.md`` specifies; never imports the trainer.
``analysis.load`` builds the table (training compute counted by ``gat.flops``),
``analysis.fit`` fits power laws with bootstrap CIs and the compute frontier,
``analysis.plots`` is the house style, and ``python -m analysis.plot_scaling`` /
``python -m analysis.plot_lr_transfer`` are the command-line reports.
"""
