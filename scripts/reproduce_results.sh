#!/usr/bin/env bash
# Regenerate everything under results/ that is committed: the embedded default, the reference
# study and the two ablations at the reference budget (run folders resumed or skipped where they
# exist), their tables, fits, plots and notebooks. About 70 min on 2 cores, plus 1.5 min to
# encode Fashion-MNIST on first use. Each launch is safe to rerun. With the same thread count and
# CPU model, metrics and fits agree to the last digit; job wall times differ between reruns.
# See results/README.md for what each step shows.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
# Checked first so a missing tool stops the script now, not after half an hour of training.
if [ ! -x .venv/bin/jupyter ]; then
  echo "reproduce_results.sh executes the ablation notebooks and needs Jupyter: run 'bash scripts/install.sh --test' first" >&2
  exit 2
fi

# 1. The embedded default: widths 8-64, two seeds, 1500 steps.
$py -m sweeps.launch scaling_grid.yaml --wait
$py -m analysis.plot_scaling results/scaling_grid

# 2. The reference study: widths 8-128, two seeds, 2500 steps (fit, frontier, hold-out).
$py -m sweeps.launch scaling_cpu.yaml --wait
$py -m analysis.plot_scaling results/scaling_cpu

# 3. MNG exp vs off at the reference budget: FD per mode, and early-layer use.
$py -m sweeps.launch mng_cpu.yaml --wait
for mode in exp off; do
  $py -m analysis.plot_scaling results/mng_cpu --where mng.mode=$mode --out results/mng_cpu/analysis/scaling_$mode
done
GATSCALE_RESULTS="$PWD/results/mng_cpu" .venv/bin/jupyter execute notebooks/early_layer_use.ipynb

# 4. Constant vs width-aware LR at the reference budget: instability, and a coordinate check.
$py -m sweeps.launch lr_rule_cpu.yaml --wait
for rule in constant width_aware; do
  $py -m analysis.plot_scaling results/lr_rule_cpu --where train.lr_rule=$rule --out results/lr_rule_cpu/analysis/scaling_$rule
done
$py -m gat.coord_check --widths 32 64 128 256 --rules constant width_aware mup --steps 5 \
  --out results/lr_rule_cpu/coord_check
GATSCALE_RESULTS="$PWD/results/lr_rule_cpu" .venv/bin/jupyter execute notebooks/instability.ipynb
