#!/usr/bin/env bash
# Mutation testing on demand (docs/mutation.md): mutmut's generated mutations of the modules in
# pyproject.toml [tool.mutmut], each run against the test files listed there, then the caught fraction.
# Hours of CPU on 2 cores, so never part of .ci/run. One process, one thread, niced.
#   bash scripts/mutation.sh                                   # every configured module
#   bash scripts/mutation.sh "lightbagel.training.stages*"     # mutants whose name matches
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
unset PYTHONPATH  # mutmut puts its mutated copy (mutants/src) first on the path
nice -n 10 mutmut run --max-children 1 "$@" || true  # a survivor is a finding, not a failure of this script
mutmut export-cicd-stats
python - <<'PY'
import json
s = json.load(open("mutants/mutmut-cicd-stats.json"))
tried = s["killed"] + s["survived"] + s["timeout"] + s.get("suspicious", 0)
print(f"mutmut: {s['killed'] + s['timeout']} of {tried} mutants caught ({s['survived']} survived, "
      f"{s['no_tests']} not reached by the selected tests, {s['skipped']} skipped); survivors: mutmut results")
PY
