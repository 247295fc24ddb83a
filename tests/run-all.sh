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
# pip_bootstrap: puts it where the ansible-test on PATH looks (each version pins its own pip).
pip_bootstrap() {
  local pip_version cached
  pip_version="$(python -c 'import inspect, re, ansible_test._internal.python_requirements as r; print(re.search(r"pip=.([0-9.]+).", inspect.getsource(r)).group(1))')" || return 1
  cached="$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
  [[ -e "$cached" ]] || install -D -m 0644 tests/sanity/pip_bootstrap.py "$cached"
}
pip_bootstrap
(cd "$stage" && ansible-test sanity --venv --python 3.11 --color no 2>&1) | tee "$results/sanity.log"

# ansible-core 2.20 and later need Python 3.12 or newer, which Debian 12 lacks: they run on a Debian 13
# controller made from the lab's trixie root (`lab/strata-lab controller run`, see docs/lab.md), from
# the staged collection. A version is declared by its file tests/requirements-core-VERSION.txt.
core_versions=()
for requirements in tests/requirements-core-*.txt; do
  [[ -e "$requirements" ]] || continue
  version="${requirements#tests/requirements-core-}"
  core_versions+=("${version%.txt}")
done
echo "=== unit and sanity tests on ansible-core ${core_versions[*]} (Debian 13 controller, Python 3.13)"
# Every sanity test runs on every version: their rules (validate-modules, pylint, ansible-doc, import)
# move with ansible-core, and all of them take under 90 s a version (under 50 s once cached). The
# 2.19 run alone has shellcheck: the same program with the same rules, absent from the root.
core_sanity_arguments=(--skip-test shellcheck)

# core_venv VERSION (in the controller): that ansible-core's virtualenv, kept in the controller's overlay
# and made anew when its requirements change. It sees Debian's python3-libvirt, so nothing is compiled.
core_venv() {
  local venv="/root/venvs/core-$1" wanted
  wanted="$(cat requirements.txt "tests/requirements-core-$1.txt" | sha256sum)"
  [[ -x "$venv/bin/python" && "$(cat "$venv/.requirements" 2>/dev/null)" == "$wanted" ]] && return 0
  rm -rf "$venv" && python3 -m venv --system-site-packages "$venv" \
    && "$venv/bin/pip" install -q --disable-pip-version-check -r "tests/requirements-core-$1.txt" \
    && echo "$wanted" > "$venv/.requirements"
}
# core_tests VERSION RESULTS SANITY_ARGUMENT... (in the controller): unit and sanity tests on that version.
core_tests() {
  local version=$1 results=$2
  shift 2
  core_venv "$version" || { echo "FATAL: no virtualenv for ansible-core $version"; return 1; }
  # Unit tests import the collection as ansible_collections.strata.migration, from above this folder.
  export PATH="/root/venvs/core-$version/bin:$PATH" PYTHONPATH="${PWD%/ansible_collections/*}"
  python -m pytest -p no:cacheprovider -q tests/unit --junitxml="$results/unit-core-$version.xml"
  pip_bootstrap
  ansible-test sanity --venv --python 3.13 --color no "$@" 2>&1 | tee "$results/sanity-core-$version.log"
}
# core_integration VERSION TARGET (in the controller): one integration target on that version.
core_integration() {
  core_venv "$1" && PATH="/root/venvs/core-$1/bin:$PATH" ansible-test integration --local --color no "$2"
}
# in_controller FUNCTION ARGUMENT...: runs one of the functions above in the controller, from the staged
# collection; the functions it calls travel along.
in_controller() {
  "$root/lab/strata-lab" controller run --timeout-s 1800 --cwd "$stage" -- \
    bash -c "$(declare -f pip_bootstrap core_venv core_tests core_integration); \"\$@\"" in-controller "$@"
}
for version in "${core_versions[@]}"; do
  started=$SECONDS
  in_controller core_tests "$version" "$results" "${core_sanity_arguments[@]}"
  echo "--- ansible-core $version: $((SECONDS - started)) s"
done

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
ecosystem_check ansible-lint ansible-lint --offline --profile production roles playbooks extensions
# The collection's logic is typed: mypy holds module_utils and plugin_utils to their annotations (run from the staged
# tree's ansible_collections parent, so the package path resolves).
ecosystem_check mypy bash -c 'cd ../../.. && mypy --python-version 3.11 --ignore-missing-imports \
  --explicit-package-bases --namespace-packages -p ansible_collections.strata.migration.plugins.module_utils \
  -p ansible_collections.strata.migration.plugins.plugin_utils'
ecosystem_check migration-options bash tests/ecosystem/migration_options.sh --check
ecosystem_check collection-docs bash tests/ecosystem/reference.sh --check
ecosystem_check changelog bash tests/ecosystem/changelog.sh
ecosystem_check execution-environment bash tests/ecosystem/execution_environment.sh
cat "$results/ecosystem.txt"

echo "=== integration tests on the lab"
# record_integration NAME COMMAND...: runs one target's command, keeps its log (the end of the run
# repeats what failed, CI may show only the tail) and writes its PASS/FAIL line.
record_integration() {
  local name=$1
  shift
  if "$@" 2>&1 | tee "$results/integration-$name.log"; [[ "${PIPESTATUS[0]}" == 0 ]]; then
    echo "PASS $name" >> "$results/integration.txt"
  else
    echo "FAIL $name" >> "$results/integration.txt"
  fi
}
stage_integration() {
  (cd "$stage" && ansible-test integration --local --color no "$1")
}
# controller_integration VERSION TARGET: one target on a newer ansible-core, in the Debian 13 controller.
controller_integration() {
  record_integration "$2-core-$1" in_controller core_integration "$1" "$2"
}
# Every host on the machine's own stack, whatever an earlier demo upgraded (the generations and
# workflow_rebalance targets add or upgrade hosts themselves and put them back).
if "$root/lab/strata-lab" up --stack all=stock; then
  cp "$lab_dir/integration_config.yml" "$stage/tests/integration/integration_config.yml"
  for target_dir in "$stage"/tests/integration/targets/*/; do
    target="$(basename "$target_dir")"
    # setup_* targets run as dependencies of the others.
    [[ "$target" == setup_* ]] && continue
    record_integration "$target" stage_integration "$target"
  done
  # One workflow on each newer ansible-core: a playbook run end to end on the lab from that controller.
  for version in "${core_versions[@]}"; do
    controller_integration "$version" workflow_evacuate
  done
  # A new-stack cluster: every host on libvirt 11 / QEMU 10 (the trixie root), for the engine's own
  # targets (the other targets met that stack in generations and workflow_rebalance); then back.
  if "$root/lab/strata-lab" up --stack all=trixie; then
    cp "$lab_dir/integration_config.yml" "$stage/tests/integration/integration_config.yml"
    for target in live_migrate live_migrate_postcopy_recovery; do
      record_integration "$target-trixie" stage_integration "$target"
    done
  else
    echo "FAIL lab-up-trixie" >> "$results/integration.txt"
  fi
  # Back on the machine's own stack for the benchmark smoke runs and the lab tests.
  "$root/lab/strata-lab" up --stack all=stock || echo "FAIL lab-up-stock" >> "$results/integration.txt"
else
  echo "FAIL lab-up" >> "$results/integration.txt"
fi

echo "=== benchmark smoke runs (benchmarks/{live_migrate,storage,shaking,recovery}_benchmark.py, vcpu_cap_soak.py --quick: they run and write their results)"
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
  # Whether a guest kernel fails is the soak's finding, not a test's; and a machine without the cgroup cpu
  # controller moves the guests uncapped: the smoke asks only that the moves ran.
  bench_smoke vcpu_cap_soak 'r["moves"] and r["summary"]["moves"]' vcpu_cap_soak.md vcpu_cap_soak.png
  # Every VM of the crashed host runs again (how fast is the benchmark's finding).
  bench_smoke recovery_benchmark 'r["rows"] and r["summary"]["restarted"] == r["summary"]["vms"]' recovery.md recovery.png
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
