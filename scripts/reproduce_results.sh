#!/usr/bin/env bash
# Regenerate everything under results/ that is committed: the three CPU studies (run folders,
# resumed or skipped where they exist), their tables, fits and plots. 35 min on 2 cores (fresh
# clone, 2026-11-29), plus 2 min to encode Fashion-MNIST on first use. Each launch is safe to
# rerun. Job wall times differ between reruns; metrics and fits agree to the printed digit.
# See results/README.md for what each step shows.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
# Checked first so a missing tool stops the script now, not after half an hour of training.
if [ ! -x .venv/bin/jupyter ]; then
  echo "reproduce_results.sh executes the ablation notebooks and needs Jupyter: run 'bash scripts/install.sh --test' first" >&2
  exit 2
fi

# 1. The embedded default: width scaling, MNG exp, width-aware LR.
$py -m sweeps.launch scaling_grid.yaml --wait
$py -m analysis.plot_scaling results/scaling_grid

# 2. MNG exp vs off at four widths, two seeds: scaling per mode, and early-layer use.
$py -m sweeps.launch mng_cpu.yaml --wait
for mode in exp off; do
  $py -m analysis.plot_scaling results/mng_cpu --where mng.mode=$mode --out results/mng_cpu/analysis/scaling_$mode
done
GATSCALE_RESULTS="$PWD/results/mng_cpu" .venv/bin/jupyter execute notebooks/early_layer_use.ipynb

# 3. Constant vs width-aware LR across widths: instability, and a μP-style coordinate check.
$py -m sweeps.launch lr_rule_cpu.yaml --wait
for rule in constant width_aware; do
  $py -m analysis.plot_scaling results/lr_rule_cpu --where train.lr_rule=$rule --out results/lr_rule_cpu/analysis/scaling_$rule
done
$py -m gat.coord_check --widths 32 64 128 256 --rules constant width_aware mup --steps 5 \
  --out results/lr_rule_cpu/coord_check
GATSCALE_RESULTS="$PWD/results/lr_rule_cpu" .venv/bin/jupyter execute notebooks/instability.ipynb
