"""Analysis of scaling studies: run folders → tidy table → fits → plots and reports.

Reads only what ``docs/run_folder.md`` specifies; never imports the trainer.
``analysis.load`` builds the table (training compute counted by ``contract.flops``) or reads a
study's committed one, ``analysis.fit`` fits power laws with bootstrap CIs and the compute
frontier, ``analysis.plots`` is the house style, ``analysis.ablations`` the early-layer and
instability reports, ``analysis.paths`` where the notebooks read and write, and
``python -m analysis.plot_scaling`` / ``python -m analysis.plot_lr_transfer`` /
``python -m analysis.ablations`` are the command-line reports.
"""
