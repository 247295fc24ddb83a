# shellcheck shell=bash
# Sourced by the tests/ecosystem scripts: the collection root, tools from the repository's
# virtualenv, an isolated Ansible configuration and a staged copy of the collection.

ecosystem_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
if [[ -d "$ecosystem_repo/.venv/bin" ]]; then
  PATH="$ecosystem_repo/.venv/bin:$PATH"
fi
export PATH

# Only the collections these scripts install are seen, never ones elsewhere on the machine.
export ANSIBLE_COLLECTIONS_SCAN_SYS_PATH=false
export ANSIBLE_NOCOLOR=1

# collection_root [DIR]: the absolute path of DIR (default: this repository), which must hold galaxy.yml.
collection_root() {
  local root
  root="$(cd "${1:-$ecosystem_repo}" && pwd -P)" || return 1
  if [[ ! -f "$root/galaxy.yml" ]]; then
    echo "error: $root has no galaxy.yml; give the collection root as the argument" >&2
    return 1
  fi
  printf '%s\n' "$root"
}

# galaxy_field ROOT FIELD: one field of ROOT/galaxy.yml.
galaxy_field() {
  python -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))[sys.argv[2]])' "$1/galaxy.yml" "$2"
}

# stage_collection ROOT COLLECTIONS_DIR: copy the collection's files to
# COLLECTIONS_DIR/ansible_collections/<namespace>/<name> and print that path. In a git work
# tree that means the tracked and new, not ignored, files (as `make stage`), so caches and
# local outputs never reach the copy.
stage_collection() {
  local root="$1" collections="$2" dest top
  dest="$collections/ansible_collections/$(galaxy_field "$root" namespace)/$(galaxy_field "$root" name)"
  mkdir -p "$dest"
  top="$(git -C "$root" rev-parse --show-toplevel 2>/dev/null || true)"
  if [[ -n "$top" && "$(cd "$top" && pwd -P)" == "$root" ]]; then
    (
      cd "$root" || exit 1
      git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' file; do [[ -e "$file" ]] && printf '%s\0' "$file"; done \
        | tar --null -T - -cf -
    ) | tar -xf - -C "$dest"
  else
    tar -C "$root" --exclude=./.git --exclude=./.venv --exclude=./.build --exclude=./tests/output -cf - . \
      | tar -xf - -C "$dest"
  fi
  printf '%s\n' "$dest"
}
