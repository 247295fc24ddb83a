# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The lab's Debian 13 controller (lab/strata_lab/controller.py): which folders a command sees, its
clean environment, the mounts that build its root, and how a command's words reach it intact.

Running a command in it needs root and the trixie root; `make test` does that for every newer
ansible-core version. These tests cover what can be checked without either.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

# The lab tool is no package of the collection: it is imported from its folder in this checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "lab"))
controller = importlib.import_module("strata_lab.controller")

LAB_DIR = Path("/var/lib/strata-lab")
CACHE_DIR = Path("/var/cache/strata-lab")
STACK_ROOT = LAB_DIR / "stacks" / "trixie"


def layout():
    return controller.controller_layout(CACHE_DIR, STACK_ROOT)


def test_the_overlay_lives_in_the_cache_above_the_stack_root():
    overlay = layout()
    assert overlay.lower == STACK_ROOT
    assert overlay.upper == CACHE_DIR / "controller" / "trixie" / "upper"
    assert overlay.work.parent == overlay.upper.parent == overlay.merged.parent


def test_shared_paths_are_absolute_unique_and_parents_first():
    paths = controller.shared_paths(Path("/work/main"), LAB_DIR, LAB_DIR / "cache")
    assert paths == ["/work/main", "/var/lib/strata-lab", "/var/lib/strata-lab/cache"]
    assert controller.shared_paths(Path("/work/main"), LAB_DIR, LAB_DIR) == ["/work/main", "/var/lib/strata-lab"]


def test_visible_inside_takes_whole_path_components():
    paths = ["/work/main", "/var/lib/strata-lab"]
    assert controller.visible_inside(Path("/work/main"), paths)
    assert controller.visible_inside(Path("/work/main/.build/collections"), paths)
    assert not controller.visible_inside(Path("/work/main-other"), paths)
    assert not controller.visible_inside(Path("/tmp"), paths)


def test_the_environment_is_clean_of_the_machines_variables(monkeypatch):
    monkeypatch.setenv("PIP_FIND_LINKS", "/opt/wheels")
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    environment = controller.controller_environment(LAB_DIR, CACHE_DIR)
    assert not [name for name in environment if name.startswith("PIP_") or name == "PYTHONPATH"]
    assert environment["HOME"] == "/root"
    # The lab tool run inside finds the same lab.
    assert environment["STRATA_LAB_DIR"] == str(LAB_DIR)
    assert environment["STRATA_LAB_CACHE"] == str(CACHE_DIR)


def test_the_mount_script_stacks_the_overlay_and_binds_shared_folders_at_their_own_paths():
    overlay = layout()
    paths = ["/work/main", str(LAB_DIR), str(CACHE_DIR)]
    lines = controller.mount_script(overlay, paths, ["/etc/resolv.conf"]).splitlines()
    assert lines[0] == "set -e"
    assert lines[1] == (f"mount -t overlay strata-controller -o lowerdir={STACK_ROOT},upperdir={overlay.upper},"
                        f"workdir={overlay.work} {overlay.merged}")
    for path in paths:
        assert f"mkdir -p {overlay.merged}{path} && mount --bind {path} {overlay.merged}{path}" in lines
    for system in ("/proc", "/sys", "/dev"):
        assert f"mount --rbind {system} {overlay.merged}{system}" in lines
    assert any(line.endswith(f"mount --bind /etc/resolv.conf {overlay.merged}/etc/resolv.conf") for line in lines)


def test_the_stack_root_is_read_only_where_a_shared_folder_shows_it():
    overlay = layout()
    read_only = f"mount -o remount,bind,ro {overlay.merged}{STACK_ROOT}"
    assert read_only in controller.mount_script(overlay, [str(LAB_DIR)], [])
    assert read_only not in controller.mount_script(overlay, ["/work/main"], [])


def test_the_command_reaches_the_controller_as_arguments_not_as_script_text():
    command = ["sh", "-c", 'echo "$1"', "sh", "a b; rm -rf /", "$HOME"]
    argv = controller.controller_argv(layout(), ["/work/main"], [], {"PATH": "/usr/bin"}, Path("/work/main"), command)
    assert argv[:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    assert argv[-len(command) - 1:] == ["/work/main", *command]
    script = argv[argv.index("-c") + 1]
    assert "rm -rf" not in script
    assert script.splitlines()[-1].startswith(f"exec chroot {layout().merged} /usr/bin/env -i PATH=/usr/bin ")


def test_the_inner_shell_enters_the_folder_and_keeps_every_word(tmp_path: Path):
    words = ["a b", "$HOME", "'quoted'", ""]
    done = subprocess.run(
        ["/bin/sh", "-c", controller.ENTER_FOLDER, "strata-controller", str(tmp_path),
         "sh", "-c", 'pwd; printf "<%s>\\n" "$@"', "sh", *words],
        capture_output=True, text=True, check=True, timeout=10,
    )
    assert done.stdout.splitlines() == [str(tmp_path), *(f"<{word}>" for word in words)]


def test_the_upper_folder_is_kept_for_the_same_root_and_emptied_for_another(tmp_path: Path):
    overlay = controller.controller_layout(tmp_path, tmp_path / "root")
    versions = {"python3": "3.13.5-1"}
    controller._prepare_overlay(overlay, versions)
    kept = overlay.upper / "root" / "venvs" / "marker"
    kept.parent.mkdir(parents=True)
    kept.write_text("a virtualenv")
    controller._prepare_overlay(overlay, versions)
    assert kept.exists()
    controller._prepare_overlay(overlay, {"python3": "3.13.6-1"})
    assert not kept.exists()
    assert overlay.upper.is_dir() and overlay.work.is_dir() and overlay.merged.is_dir()
    assert json.loads(overlay.versions_stamp.read_text()) == {"python3": "3.13.6-1"}
