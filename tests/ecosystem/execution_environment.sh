#!/usr/bin/env bash
# The execution environment check of `make test`.
#
#   tests/ecosystem/execution_environment.sh [COLLECTION_ROOT]
#
# What it proves, with no container engine:
#   - the collection tarball, built as users build it from a staged copy, carries
#     meta/execution-environment.yml, requirements.txt and bindep.txt;
#   - ansible-builder's own introspection of the collection installed from that tarball (the step
#     the image build runs in its builder stage) finds libvirt-python, marked as coming from this
#     collection;
#   - the system packages it finds, evaluated with bindep for an RPM platform (the EE base image)
#     and a Debian one (a plain controller), install gcc, pkg-config, the Python headers and the
#     libvirt headers when building ([compile]), and the libvirt client library and ssh at run time;
#   - `ansible-builder create` accepts tests/ecosystem/execution-environment.yml (the definition an
#     AWX admin copies), and the build context it writes holds the very tarball that was built, the
#     galaxy requirement installing it, the introspection step, and the CRB repository enabled
#     in the builder stage before the packages are installed.
# What it cannot prove: that the image builds and runs. No image is built here (no container
# engine, no package mirrors): package names are checked against what bindep would ask the
# package manager for, not against the base image's repositories, and libvirt-python is not compiled.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

root="$(collection_root "${1:-}")"
definition="$root/tests/ecosystem/execution-environment.yml"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export ANSIBLE_COLLECTIONS_PATH="$work/installed"

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

echo "--- build the collection tarball from a staged copy"
staged="$(stage_collection "$root" "$work/stage")"
ansible-galaxy collection build --output-path "$work/dist" "$staged"
version="$(galaxy_field "$root" version)"
tarball_name="$(galaxy_field "$root" namespace)-$(galaxy_field "$root" name)-$version.tar.gz"
tarball="$work/dist/$tarball_name"
[[ -f "$tarball" ]] || fail "ansible-galaxy collection build did not write $tarball_name"
members="$(tar -tzf "$tarball")"
for member in meta/execution-environment.yml requirements.txt bindep.txt; do
  grep -qx "$member" <<< "$members" || fail "$tarball_name lacks $member (galaxy.yml build_ignore?)"
done

echo "--- introspect the collection installed from the tarball, as the image build does"
ansible-galaxy collection install --offline -p "$work/installed" "$tarball"
ansible-builder introspect --write-pip "$work/pip.txt" --write-bindep "$work/bindep.txt" "$work/installed"

python - "$work/pip.txt" "$work/bindep.txt" <<'PY'
import sys

from bindep.depends import Depends
from packaging.requirements import Requirement

pip_path, bindep_path = sys.argv[1:]
source = "# from collection strata.migration"
errors = []

pip_lines = [line for line in open(pip_path).read().splitlines() if line.strip()]
names = {Requirement(line.split("#")[0]).name.lower() for line in pip_lines if line.endswith(source)}
if "libvirt-python" not in names:
    errors.append(f"libvirt-python is not among the Python requirements introspected from the collection: {pip_lines}")

bindep_lines = [line for line in open(bindep_path).read().splitlines() if line.strip()]
if not any(line.endswith(source) for line in bindep_lines):
    errors.append(f"no system requirement introspected from the collection: {bindep_lines}")
depends = Depends("".join(line.split("#")[0].strip() + "\n" for line in bindep_lines))

# What bindep would install on each platform: `bindep -b compile` in the builder stage,
# the default profile in the final image.
platforms = {
    "rpm (EE base image)": ["platform:rpm", "platform:redhat", "platform:centos", "platform:dnf"],
    "dpkg (Debian controller)": ["platform:dpkg", "platform:debian"],
}
expected = {
    "rpm (EE base image)": {
        "compile": {"gcc", "pkg-config", "python3-devel", "libvirt-devel"},
        "default": {"libvirt-libs", "openssh-clients"},
    },
    "dpkg (Debian controller)": {
        "compile": {"gcc", "pkg-config", "python3-dev", "libvirt-dev"},
        "default": {"libvirt0", "openssh-client"},
    },
}
for platform, atoms in platforms.items():
    for profile, wanted in expected[platform].items():
        got = {rule[0] for rule in depends.active_rules(atoms + [profile])}
        if not wanted <= got:
            errors.append(f"{platform}, profile {profile}: bindep lacks {sorted(wanted - got)} (it selects {sorted(got)})")
        print(f"{platform}, {profile}: {' '.join(sorted(got))}")
    runtime = {rule[0] for rule in depends.active_rules(atoms + ["default"])}
    leaked = runtime & expected[platform]["compile"]
    if leaked:
        errors.append(f"{platform}: build-only packages {sorted(leaked)} would stay in the final image")

if errors:
    sys.exit("FAIL: " + "\nFAIL: ".join(errors))
print("libvirt-python and the libvirt system packages come from the collection's meta/execution-environment.yml")
PY

echo "--- ansible-builder create on tests/ecosystem/execution-environment.yml"
[[ -f "$definition" ]] || fail "$definition is missing"
mkdir -p "$work/ee"
cp "$definition" "$work/ee/execution-environment.yml"
cp "$tarball" "$work/ee/"
grep -q "$tarball_name" "$definition" \
  || fail "$definition does not name $tarball_name (the collection's version is $version): update it"
ansible-builder create -f "$work/ee/execution-environment.yml" -c "$work/ee/context" --output-filename Containerfile

python - "$work/ee/context" "$tarball" <<'PY'
import hashlib
import pathlib
import sys

import yaml

context, tarball = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
errors = []


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


copied = context / "_build" / "collections" / tarball.name
if not copied.is_file():
    errors.append(f"the build context lacks _build/collections/{tarball.name}")
elif digest(copied) != digest(tarball):
    errors.append(f"_build/collections/{tarball.name} is not the tarball that was built")

requirements = yaml.safe_load((context / "_build" / "requirements.yml").read_text())
wanted = {"name": f"/build/collections/{tarball.name}", "type": "file"}
if wanted not in (requirements or {}).get("collections", []):
    errors.append(f"_build/requirements.yml does not install {wanted}: {requirements}")

containerfile = (context / "Containerfile").read_text().splitlines()
stages = {}
stage = None
for line in containerfile:
    if line.startswith("FROM "):
        stage = line.split()[-1]
    stages.setdefault(stage, []).append(line)
builder = stages.get("builder", [])


def position(lines, text):
    return next((index for index, line in enumerate(lines) if text in line), None)


checks = {
    "the galaxy stage copies the build files": position(stages.get("galaxy", []), "COPY _build /build"),
    "the galaxy stage installs requirements.yml": position(stages.get("galaxy", []), "collection install"),
    "the builder stage introspects the collections": position(builder, "introspect.py introspect"),
    "the builder stage enables CRB": position(builder, "config-manager --set-enabled crb"),
    "the final stage installs the system packages": position(stages.get("final", []), "install-from-bindep"),
}
for what, found in checks.items():
    if found is None:
        errors.append(f"Containerfile: not found: {what}")
crb, assemble = checks["the builder stage enables CRB"], position(builder, "scripts/assemble")
if crb is not None and (assemble is None or crb > assemble):
    errors.append("Containerfile: CRB is enabled after the builder stage installs the compile packages")

if errors:
    sys.exit("FAIL: " + "\nFAIL: ".join(errors))
print(f"build context: {tarball.name} installed from the context, introspection, CRB, system packages")
PY
echo "PASS execution environment: tarball, introspection and ansible-builder create"
