#!/usr/bin/env bash
# The runs behind docs/results.md, on the default models, CPU-sized (see the limits
# there). Needs `make setup` and ../shared/datasets (or ADAPTBENCH_DATA_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
export ADAPTBENCH_DATA_DIR="${ADAPTBENCH_DATA_DIR:-$(cd .. && pwd)/shared/datasets}"
export HF_HUB_OFFLINE=1
AB=".venv/bin/adaptbench"
$AB run eval_suites/pubmedqa.yaml -n 200 -o reports/results-pubmedqa
$AB run eval_suites/covid_qa.yaml -n 100 -o reports/results-covid_qa
$AB run eval_suites/banking77.yaml -o reports/results-banking77
$AB run eval_suites/covid_faq.yaml -n 60 -o reports/results-covid_faq
$AB run eval_suites/pubmedqa.yaml -n 100 --seeds 3 -s zero_shot,few_shot -o reports/results-pubmedqa-seeds
.venv/bin/python scripts/results_tables.py reports/results-{pubmedqa,covid_qa,banking77,covid_faq}
