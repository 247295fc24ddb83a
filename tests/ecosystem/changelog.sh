#!/usr/bin/env bash
# The changelog check of `make test`:
#
#   tests/ecosystem/changelog.sh [COLLECTION_ROOT]
#
# antsibull-changelog lint (the fragments in changelogs/fragments/), lint-changelog-yaml
# (changelogs/changelog.yaml), and the committed changelog file (CHANGELOG.md, as
# changelogs/config.yaml names it) equal to one generated afresh from changelogs/changelog.yaml,
# so it is never edited by hand nor left behind a release. Runs offline on a staged copy.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

root="$(collection_root "${1:-}")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export ANSIBLE_COLLECTIONS_PATH="$work/collections"
staged="$(stage_collection "$root" "$work/collections")"
cd "$staged"

status=0
antsibull-changelog lint || { echo "FAIL: antsibull-changelog lint" >&2; status=1; }
antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml \
  || { echo "FAIL: antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml" >&2; status=1; }

# generate rewrites the changelog file of the staged copy; compare it with the committed one.
antsibull-changelog generate
changelog_file="$(python -c 'import os, sys, yaml
template = yaml.safe_load(open("changelogs/config.yaml"))["changelog_filename_template"]
print(os.path.normpath(os.path.join("changelogs", template)))')"
if diff -u "$root/$changelog_file" "$changelog_file"; then
  echo "$changelog_file matches changelogs/changelog.yaml"
else
  echo "FAIL: $changelog_file differs from what changelogs/changelog.yaml gives;" \
    "regenerate it with: antsibull-changelog generate" >&2
  status=1
fi
[[ $status -eq 0 ]] && echo "changelog: clean"
exit "$status"
