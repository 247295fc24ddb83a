# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Which stack each lab host runs (`up --stack`), and the legacy host's CPU map on either stack.

Starting hosts needs root and the lab; the lab's own tests and the generations and
workflow_rebalance integration targets do that. These tests cover what needs neither.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from pathlib import Path

import pytest

# The lab tool is no package of the collection: it is imported from its folder in this checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "lab"))
lab_main = importlib.import_module("strata_lab.__main__")
lab_config = importlib.import_module("strata_lab.config")
lab_hosts = importlib.import_module("strata_lab.hosts")


def test_hosts_keep_their_recorded_stack_unless_named():
    recorded = {"hv1": "trixie", "hv2": "stock"}
    assert lab_main._host_stacks(None, 3, recorded) == {"hv1": "trixie", "hv2": "stock", "hv3": "stock"}
    assert lab_main._host_stacks(["hv2=trixie"], 3, recorded) == {"hv1": "trixie", "hv2": "trixie", "hv3": "stock"}


def test_all_sets_every_host_and_a_later_word_wins():
    stacks = lab_main._host_stacks(["all=trixie", "hv3=stock"], 3, {})
    assert stacks == {"hv1": "trixie", "hv2": "trixie", "hv3": "stock"}
    assert lab_main._host_stacks(["all=stock"], 2, {"hv1": "trixie", "hv2": "trixie"}) == {"hv1": "stock", "hv2": "stock"}


@pytest.mark.parametrize("word, message", [
    ("hv4=trixie", "HOST one of hv1..hv3 or all"),
    ("hv1", "expected HOST=STACK"),
    ("hv1=bogus", "unknown stack 'bogus'"),
])
def test_bad_stack_words_are_refused(word, message):
    with pytest.raises(lab_config.LabError, match=message):
        lab_main._host_stacks([word], 3, {})


def _cpu_map(root: Path, models: list[str]) -> None:
    folder = root / "usr/share/libvirt/cpu_map"
    folder.mkdir(parents=True)
    (folder / "index.xml").write_text(
        "<cpus>\n" + "".join(f"  <include filename='x86_{model}.xml'/>\n" for model in models) + "</cpus>\n")
    for model in models:
        (folder / f"x86_{model}.xml").write_text(f"<cpus><model name='{model}'/></cpus>\n")


def test_legacy_map_drops_the_model_with_its_versioned_variants(tmp_path):
    # libvirt 11's Westmere-v1 names Westmere as its ancestor: left alone, it would disable every model.
    stack_root = tmp_path / "root"
    _cpu_map(stack_root, ["qemu64", "Westmere", "Westmere-IBRS", "Westmere-v1", "Westmere-v2", "Nehalem"])
    host = lab_config.make_host_spec(tmp_path / "lab", 3, 3072, legacy=True, stack="trixie",
                                     stack_root=str(stack_root))
    Path(host.root).mkdir(parents=True)
    lab_hosts._write_legacy_cpu_map(host)
    written = Path(host.root) / "cpu_map"
    assert sorted(path.name for path in written.glob("x86_*.xml")) == ["x86_Nehalem.xml", "x86_qemu64.xml"]
    index = (written / "index.xml").read_text()
    assert "Westmere" not in index
    assert "x86_Nehalem.xml" in index and "x86_qemu64.xml" in index


class _Calls:
    """Records what _restart_host asked of the hosts module, in order."""

    def __init__(self, monkeypatch, config_current: bool):
        self.calls: list = []
        monkeypatch.setattr(lab_hosts, "host_config_current", lambda host: config_current)
        monkeypatch.setattr(lab_hosts, "stop_host", lambda host: self.calls.append("stop"))
        monkeypatch.setattr(lab_hosts, "start_host",
                            lambda host, keep_running=False: self.calls.append(("start", keep_running)))


def _spec(tmp_path):
    return lab_config.make_host_spec(tmp_path, 1, 2048)


def test_a_restart_takes_back_the_guests_of_a_crashed_libvirtd(monkeypatch, tmp_path):
    calls = _Calls(monkeypatch, config_current=True)
    said = lab_main._restart_host(_spec(tmp_path), orphans=[4242])
    # Never stop_host: it cannot stop guests whose libvirtd is gone, and a fresh start would forget them.
    assert calls.calls == [("start", True)]
    assert "guests kept" in said


def test_a_restart_without_orphans_clears_what_a_killed_run_left(monkeypatch, tmp_path):
    calls = _Calls(monkeypatch, config_current=False)
    assert lab_main._restart_host(_spec(tmp_path), orphans=[]) == "started"
    assert calls.calls == ["stop", ("start", False)]


def test_a_host_with_orphaned_guests_cannot_change_its_stack_or_settings(monkeypatch, tmp_path):
    calls = _Calls(monkeypatch, config_current=False)
    with pytest.raises(lab_config.LabError, match=r"hv1's libvirtd is down while its guests run \(QEMU pids \[4242\]\)"):
        lab_main._restart_host(_spec(tmp_path), orphans=[4242])
    assert calls.calls == []  # nothing stopped or started


def test_a_restore_of_a_root_in_use_by_the_controller_is_refused(tmp_path):
    lab_stack = importlib.import_module("strata_lab.stack")
    fcntl = importlib.import_module("fcntl")
    with lab_stack._root_lock(tmp_path, "trixie", fcntl.LOCK_SH) as held:
        assert held
        # What a restore asks for: refused while a controller run holds the root...
        with lab_stack._root_lock(tmp_path, "trixie", fcntl.LOCK_EX | fcntl.LOCK_NB) as taken:
            assert not taken
    # ...and granted once it ended.
    with lab_stack._root_lock(tmp_path, "trixie", fcntl.LOCK_EX | fcntl.LOCK_NB) as taken:
        assert taken


def test_ensure_stack_refuses_to_restore_under_a_controller_run(monkeypatch, tmp_path):
    lab_stack = importlib.import_module("strata_lab.stack")
    fcntl = importlib.import_module("fcntl")
    cache_dir, lab_dir = tmp_path / "cache", tmp_path / "lab"
    manifest = {"tarball": "trixie-new.tar.zst", "versions": {}}
    monkeypatch.setattr(lab_stack, "_cached_manifest", lambda cache, name: manifest)
    monkeypatch.setattr(lab_stack, "ensure_packages", lambda packages: [])
    root = lab_dir / "stacks" / "trixie"
    (root / "usr/sbin").mkdir(parents=True)
    (root / "usr/sbin/libvirtd").write_text("the root a controller run overlays")
    (lab_dir / "stacks" / "trixie.restored").write_text("trixie-old.tar.zst")  # a newer tarball is cached
    with lab_stack._root_lock(lab_dir, "trixie", fcntl.LOCK_SH):
        with pytest.raises(lab_config.LabError, match="a `strata-lab controller run` uses it"):
            lab_stack.ensure_stack(cache_dir, lab_dir, "trixie")
    assert (root / "usr/sbin/libvirtd").read_text() == "the root a controller run overlays"


def test_a_host_whose_guests_run_without_libvirtd_stays_in_the_lab(monkeypatch, tmp_path):
    state = lab_config.LabState(lab_dir=str(tmp_path), cache_dir=str(tmp_path), domain_type="qemu",
                                hosts=[_spec(tmp_path)])
    state.save()
    stopped = []
    monkeypatch.setattr(lab_hosts, "host_is_up", lambda host: False)
    monkeypatch.setattr(lab_hosts, "orphaned_guests", lambda host: [4242])
    monkeypatch.setattr(lab_hosts, "stop_host", stopped.append)
    # Removed, its guests would run on unseen and defined nowhere: `host remove` and a smaller `up` refuse.
    with pytest.raises(lab_config.LabError, match=r"takes them back; move or delete them before taking hv1 out"):
        lab_main.cmd_host_remove(argparse.Namespace(lab_dir=tmp_path, name="hv1"))
    assert stopped == []
    assert [h.name for h in lab_config.LabState.load(tmp_path).hosts] == ["hv1"]
    assert [h.name for h in lab_main._surplus_hosts(tmp_path, dataclasses.replace(state, hosts=[]))] == ["hv1"]


# ---- cgroups: each host's libvirtd in a cgroup namespace of its own -------------------------

HYBRID_MOUNTS = """tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""


@pytest.mark.parametrize("mounts, expected", [
    (HYBRID_MOUNTS, (Path("/sys/fs/cgroup/cpu"), "cpu")),
    ("cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,cpu,cpuacct 0 0\n",
     (Path("/sys/fs/cgroup/cpu,cpuacct"), "cpu,cpuacct")),
    ("cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n", None),
])
def test_the_cpu_hierarchy_is_found_in_the_mount_table(mounts, expected):
    assert lab_hosts.cpu_hierarchy_in(mounts) == expected


def lab_host(tmp_path):
    return lab_config.HostSpec(name="hv1", index=1, address="127.0.0.11", host_uuid="u", migration_port_min=1,
                               migration_port_max=2, memory_capacity_mib=1024, root=str(tmp_path))


def test_with_cgroup_v1_each_host_runs_in_a_cgroup_namespace_rooted_at_its_own_cgroup(monkeypatch, tmp_path):
    monkeypatch.setattr(lab_hosts, "cpu_hierarchy", lambda: (Path("/sys/fs/cgroup/cpu"), "cpu"))
    host = lab_host(tmp_path)
    command = lab_hosts._start_command(host)
    assert command[:2] == ["/bin/sh", "-c"]
    assert "echo $$ > /sys/fs/cgroup/cpu/strata-lab/hv1/cgroup.procs && exec unshare" in command[2]
    assert "--cgroup" in command[2]
    script = command[-1]
    # Remounted inside the namespace, the hierarchy's root is the host's cgroup; the empty v2 one goes.
    assert "mount -t cgroup -o cpu strata-lab-cpu /sys/fs/cgroup/cpu" in script
    assert "umount /sys/fs/cgroup/unified" in script
    assert script.index("strata-lab-cpu") < script.index("exec libvirtd")
    assert 'cgroup_controllers = [ "cpu" ]' in lab_hosts.render_qemu_conf(host)


def test_without_cgroup_v1_the_lab_runs_without_cgroups(monkeypatch, tmp_path):
    monkeypatch.setattr(lab_hosts, "cpu_hierarchy", lambda: None)
    host = lab_host(tmp_path)
    assert lab_hosts._start_command(host)[:6] == ["unshare", "--mount", "--uts", "--propagation", "private", "--"]
    assert "strata-lab-cpu" not in lab_hosts._start_script(host)
    assert "cgroup_controllers = [  ]" in lab_hosts.render_qemu_conf(host)


def test_a_host_whose_qemu_conf_names_lockd_runs_its_own_virtlockd_first_and_keeps_the_setting(monkeypatch, tmp_path):
    # The operator's lock manager (the hypervisor role writes it into the host's own qemu.conf) survives
    # the lab's next start; a host new to the lab starts without it.
    monkeypatch.setattr(lab_hosts, "cpu_hierarchy", lambda: None)
    root = tmp_path / "hosts" / "hv1"
    host = lab_host(root)
    etc = host.private_dir("etc")
    etc.mkdir(parents=True)
    assert "virtlockd" not in lab_hosts._start_script(host)
    assert "lock_manager" not in lab_hosts.render_qemu_conf(host)
    (etc / "qemu.conf").write_text(lab_hosts.render_qemu_conf(host) + 'lock_manager = "lockd"\n')
    (etc / "qemu-lockd.conf").write_text('file_lockspace_dir = "/srv/leases"\n')
    script = lab_hosts._start_script(host)
    assert f"virtlockd --daemon --pid-file {root}/virtlockd.pid" in script
    assert script.index("virtlockd --daemon") < script.index("exec libvirtd")
    assert lab_hosts.render_qemu_conf(host).endswith('lock_manager = "lockd"\n')
    trixie = dataclasses.replace(host, stack="trixie", stack_root=str(tmp_path / "trixie"))
    with pytest.raises(lab_config.LabError, match="the trixie root has no virtlockd"):
        lab_hosts.prepare_host_dirs(trixie)
    assert (etc / "qemu.conf").read_text().endswith('lock_manager = "lockd"\n')  # refused before any write
    lab_hosts.forget_operator_settings(host)
    assert not (etc / "qemu-lockd.conf").exists()
    assert "virtlockd" not in lab_hosts._start_script(host)
