#!/usr/bin/env bash
# The module, plugin and role reference in docs/reference/, generated with antsibull-docs from
# the collection's DOCUMENTATION blocks, filter docs and roles' meta/argument_specs.yml, as
# simplified RST that a git forge renders without Sphinx.
#
#   tests/ecosystem/reference.sh [COLLECTION_ROOT]          regenerate docs/reference/
#   tests/ecosystem/reference.sh --check [COLLECTION_ROOT]  fail when docs/reference/ differs from
#                                                           a fresh generation (make test)
#
# Both modes then run `antsibull-docs lint-collection-docs --plugin-docs` and fail on any finding.
# Everything runs offline on a staged copy of the collection in a temporary directory.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

check=false
if [[ "${1:-}" == "--check" ]]; then
  check=true
  shift
fi
root="$(collection_root "${1:-}")"
reference="$root/docs/reference"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export ANSIBLE_COLLECTIONS_PATH="$work/collections"
staged="$(stage_collection "$root" "$work/collections")"
fqcn="$(galaxy_field "$root" namespace).$(galaxy_field "$root" name)"

# No antsibull-docs version in the pages, so the committed reference changes only when the docs do.
mkdir -p "$work/generated"
antsibull-docs collection --use-current --squash-hierarchy --output-format simplified-rst \
  --no-add-antsibull-docs-version --fail-on-error --dest-dir "$work/generated" "$fqcn"

# docs/reference/README.md is written by hand; every other file there is generated.
status=0
if $check; then
  if diff -r -u --exclude=README.md "$reference" "$work/generated"; then
    echo "docs/reference/ matches the code"
  else
    echo "FAIL: docs/reference/ is stale; regenerate it with: tests/ecosystem/reference.sh" >&2
    status=1
  fi
else
  mkdir -p "$reference"
  find "$reference" -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
  cp -R "$work/generated/." "$reference/"
  echo "Wrote $(find "$work/generated" -type f | wc -l) pages to $reference"
fi

if antsibull-docs lint-collection-docs --plugin-docs --output-format simplified-rst \
  --validate-collection-refs all --disallow-unknown-collection-refs "$staged"; then
  echo "antsibull-docs lint-collection-docs: clean"
else
  echo "FAIL: antsibull-docs lint-collection-docs found problems (above)" >&2
  status=1
fi
exit "$status"
