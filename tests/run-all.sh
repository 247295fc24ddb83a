#!/usr/bin/env bash
# `make test`: unit, sanity and integration tests against the real lab. The lab is
# always brought down at the end; the last line counts what passed and failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
root="$PWD"
lab_dir="${STRATA_LAB_DIR:-/var/lib/strata-lab}"
export PATH="$root/.venv/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$root/.build/collections"
# Unit tests import the collection as ansible_collections.strata.migration.
export PYTHONPATH="$root/.build/collections${PYTHONPATH:+:$PYTHONPATH}"
results="$root/.build/test-results"
stage="$root/.build/collections/ansible_collections/strata/migration"
rm -rf "$results" && mkdir -p "$results"
: > "$results/integration.txt"

trap '"$root/lab/strata-lab" down >/dev/null 2>&1 || true' EXIT
make -s stage || exit 1

echo "=== unit tests"
(cd "$stage" && python -m pytest -p no:cacheprovider -q tests/unit --junitxml="$results/unit.xml")

echo "=== sanity tests (ansible-test sanity, Python 3.11)"
# ansible-test bootstraps pip in its sanity virtualenvs with a script it downloads from a
# host outside the package registries; where that host is out of reach, its documented
# fallback is a script in its cache: ours installs Python's bundled pip instead.
pip_version="$(python -c 'import inspect, re, ansible_test._internal.python_requirements as r; print(re.search(r"pip=.([0-9.]+).", inspect.getsource(r)).group(1))')"
pip_bootstrap="$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
[[ -e "$pip_bootstrap" ]] || install -D -m 0644 tests/sanity/pip_bootstrap.py "$pip_bootstrap"
(cd "$stage" && ansible-test sanity --venv --python 3.11 --color no 2>&1) | tee "$results/sanity.log"

echo "=== ecosystem checks (lint, generated reference, changelog, execution environment)"
: > "$results/ecosystem.txt"
# Each check runs on the staged collection; its log is kept and its tail shown when it fails.
ecosystem_check() {
  local name="$1"; shift
  if (cd "$stage" && "$@") > "$results/ecosystem-$name.log" 2>&1; then
    echo "PASS $name" >> "$results/ecosystem.txt"
  else
    echo "FAIL $name" >> "$results/ecosystem.txt"
    tail -n 30 "$results/ecosystem-$name.log"
  fi
}
ecosystem_check sanity-ignores-empty bash -c '! grep -s -v "^$" tests/sanity/ignore-*.txt'
ecosystem_check ansible-lint ansible-lint --offline --profile production roles playbooks
ecosystem_check collection-docs bash tests/ecosystem/reference.sh --check
ecosystem_check changelog bash tests/ecosystem/changelog.sh
ecosystem_check execution-environment bash tests/ecosystem/execution_environment.sh
cat "$results/ecosystem.txt"

echo "=== integration tests on the lab"
if "$root/lab/strata-lab" up; then
  cp "$lab_dir/integration_config.yml" "$stage/tests/integration/integration_config.yml"
  for target_dir in "$stage"/tests/integration/targets/*/; do
    target="$(basename "$target_dir")"
    # setup_* targets run as dependencies of the others.
    [[ "$target" == setup_* ]] && continue
    # The log is kept so the end of the run can repeat what failed (CI may show only the tail).
    if (cd "$stage" && ansible-test integration --local --color no "$target") 2>&1 \
        | tee "$results/integration-$target.log"; [[ "${PIPESTATUS[0]}" == 0 ]]; then
      echo "PASS $target" >> "$results/integration.txt"
    else
      echo "FAIL $target" >> "$results/integration.txt"
    fi
  done
else
  echo "FAIL lab-up" >> "$results/integration.txt"
fi

echo "=== benchmark smoke runs (benchmarks/{live_migrate,storage,shaking}_benchmark.py --quick: they run and write their results)"
# Speed is the benchmarks' business, not the tests': this checks they work end to end on the lab.
bench_dir="$results/benchmark"
: > "$results/benchmark.txt"
# bench_smoke NAME JSON_CHECK FILE...: runs benchmarks/NAME.py --quick; it passes when the run ends, its
# JSON holds what JSON_CHECK (a Python expression on r) asks, and each FILE was written.
bench_smoke() {
  local name=$1 check=$2; shift 2
  local files_ok=true file
  if python "benchmarks/$name.py" --quick --out-dir "$bench_dir" > "$results/$name.log" 2>&1 \
    && python -c "import json, sys; r = json.load(open(sys.argv[1])); sys.exit(not ($check))" \
         "$bench_dir/${name%_benchmark}.json"; then
    for file in "$@"; do [[ -s "$bench_dir/$file" ]] || files_ok=false; done
    if $files_ok; then
      echo "PASS $name" >> "$results/benchmark.txt"
      return
    fi
  fi
  echo "FAIL $name" >> "$results/benchmark.txt"
  tail -n 30 "$results/$name.log"
}
if pip install -q --disable-pip-version-check -r benchmarks/requirements.txt; then
  bench_smoke live_migrate_benchmark 'r["results"] and r["targets"]' live_migrate.md live_migrate_shaking.png
  # It exits 1 when a move fails or the guest's disk does not read back intact afterwards.
  bench_smoke storage_benchmark 'r["results"] and not r["failures"]' storage.md storage.png
  bench_smoke shaking_benchmark 'r["results"] and r["targets"]' shaking.md shaking_far.png
else
  echo "FAIL benchmark requirements" >> "$results/benchmark.txt"
fi

echo "=== lab lifecycle tests (up, down, up again, recovery after a kill)"
(cd "$stage" && python -m pytest -p no:cacheprovider -q tests/lab --junitxml="$results/lab.xml")

# What failed, again, where a truncated log still shows it.
grep '^FAIL' "$results"/{ecosystem,integration,benchmark}.txt 2>/dev/null | while IFS=: read -r listing line; do
  echo "=== ${line} ($(basename "$listing" .txt))"
  log="$results/integration-${line#FAIL }.log"
  [[ -f "$log" ]] && grep -E -A 12 '^(fatal|failed):|^TASK \[' "$log" | grep -E -B 1 -A 12 '^(fatal|failed):' | tail -n 40
done
python3 tests/summarize.py "$results"
