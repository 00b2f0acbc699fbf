#!/usr/bin/env bash
# Regenerate the studies under results/ that today's code produced: the embedded default (run
# folders resumed or skipped where they exist), its table, fits and plots. About 8 min on 2 cores,
# plus 1.5 min to encode Fashion-MNIST on first use. Each launch is safe to rerun. With the same thread count and CPU model, metrics and fits agree to the last digit;
# job wall times differ between reruns. results/short_budget/ was made by an earlier step
# implementation and is not rerun (results/README.md says why). See results/README.md for what
# each step shows.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python

# 1. The embedded default: widths 8-64, two seeds, 1500 steps.
$py -m sweeps.launch scaling_grid.yaml --wait
$py -m analysis.plot_scaling results/scaling_grid

# Not yet run, so not committed: the reference study (scaling_cpu.yaml) and the ablations at its
# budget (mng_cpu.yaml, lr_rule_cpu.yaml); results/README.md says what is planned.
