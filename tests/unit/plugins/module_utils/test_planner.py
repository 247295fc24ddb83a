# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The placement planner: constraints, both modes, waves, estimates and input checks.

Hosts below have 10,000 MiB and 4 CPUs unless a test says otherwise, so a
1,000 MiB VM is 10 percentage points of a host.
"""

from __future__ import annotations

import random
import typing as t

import pytest

from ansible_collections.strata.migration.plugins.module_utils._convergence import MigrationInputs, choose_strategy
from ansible_collections.strata.migration.plugins.module_utils._planner import (
    DEFAULT_MOVE_OVERHEAD_S,
    PlanError,
    PlanOptions,
    VmSpec,
    _assign_waves,
    plan_from_data,
)


def host(name: str, memory: int = 10000, cpus: int = 4, **extra: t.Any) -> t.Dict[str, t.Any]:
    return dict({"name": name, "memory_capacity_mib": memory, "cpus": cpus}, **extra)


def vm(name: str, on: str, memory: int = 1000, vcpus: int = 1, **extra: t.Any) -> t.Dict[str, t.Any]:
    return dict({"name": name, "uuid": "uuid-" + name, "host": on, "memory_mib": memory, "vcpus": vcpus}, **extra)


def evacuate(hosts: t.List[t.Dict[str, t.Any]], vms: t.List[t.Dict[str, t.Any]], *names: str,
             **options: t.Any) -> t.Dict[str, t.Any]:
    return plan_from_data(hosts, vms, dict(options, mode="evacuate", evacuate_hosts=list(names))).to_dict()


def rebalance(hosts: t.List[t.Dict[str, t.Any]], vms: t.List[t.Dict[str, t.Any]],
              **options: t.Any) -> t.Dict[str, t.Any]:
    return plan_from_data(hosts, vms, dict(options, mode="rebalance")).to_dict()


def targets(plan: t.Dict[str, t.Any]) -> t.Dict[str, str]:
    return {move["vm"]: move["to"] for move in plan["moves"]}


def after_moves(vms: t.List[t.Dict[str, t.Any]], plan: t.Dict[str, t.Any]) -> t.List[t.Dict[str, t.Any]]:
    moved = targets(plan)
    return [dict(item, host=moved.get(item["name"], item["host"])) for item in vms]


def estimate(memory_mib: float, dirty_rate_mibps: float = 0.0, bandwidth_mibps: float = 1000.0,
             max_downtime_ms: float = 300.0, overhead_s: float = DEFAULT_MOVE_OVERHEAD_S) -> float:
    inputs = MigrationInputs(memory_mib=memory_mib, dirty_rate_mibps=dirty_rate_mibps,
                             bandwidth_mibps=bandwidth_mibps, max_downtime_ms=max_downtime_ms)
    return overhead_s + choose_strategy(inputs, allow_postcopy=False)[0].total_s


def skewed_cluster(seed: int, hosts: int = 6, per_host: int = 6) -> t.Tuple[list, list]:
    rng = random.Random(seed)
    host_list = [host("h%d" % index, memory=40000, cpus=32) for index in range(hosts)]
    vm_list = []
    for index in range(hosts):
        # The first third of the hosts carry twice as many VMs.
        count = per_host * 2 if index < hosts // 3 else per_host // 2
        for number in range(count):
            vm_list.append(vm("vm%d-%d" % (index, number), "h%d" % index, memory=rng.randint(512, 3000)))
    return host_list, vm_list


# --- evacuate ---------------------------------------------------------------------------------------------------


def test_evacuate_largest_first_to_most_free_memory():
    hosts = [host("a"), host("b"), host("c")]
    vms = [vm("small", "a", 1000), vm("big", "a", 3000), vm("mid", "a", 2000), vm("resident", "b", 500)]
    plan = evacuate(hosts, vms, "a", max_parallel_total=10)
    # Free memory: b 9500, c 10000. big -> c (c 7000 left); mid -> b (b 7500 left); small -> b (7500 > 7000).
    assert [move["vm"] for move in plan["moves"]] == ["big", "mid", "small"]
    assert targets(plan) == {"big": "c", "mid": "b", "small": "b"}
    assert plan["load_after"]["a"]["memory_committed_mib"] == 0
    assert plan["load_after"]["b"]["memory_committed_mib"] == 3500
    assert plan["load_after"]["c"]["memory_committed_mib"] == 3000
    assert plan["unplaceable"] == [] and plan["not_moved"] == []


def test_evacuate_tie_on_free_memory_goes_to_first_name():
    plan = evacuate([host("z"), host("c"), host("b")], [vm("one", "z")], "z")
    assert targets(plan) == {"one": "b"}


def test_evacuate_memory_binding_keeps_vm_on_its_host():
    hosts = [host("a"), host("b", reserve_mib=6000)]
    vms = [vm("large", "a", 5000), vm("fits", "a", 3000)]
    plan = evacuate(hosts, vms, "a")
    assert targets(plan) == {"fits": "b"}
    (item,) = plan["unplaceable"]
    assert item["vm"] == "large" and item["host"] == "a" and item["constraint"] == "memory"
    assert "5000 MiB" in item["reason"] and "4000 MiB" in item["reason"]
    assert plan["load_after"]["a"]["memory_committed_mib"] == 5000
    assert plan["load_after"]["b"]["memory_free_mib"] == 1000


def test_evacuate_vcpu_binding():
    hosts = [host("a"), host("b", cpus=1)]
    vms = [vm("wide", "a", vcpus=3), vm("narrow", "a", vcpus=1), vm("b-resident", "b", 500, vcpus=1)]
    plan = evacuate(hosts, vms, "a", vcpu_overcommit_ratio=2.0)
    assert targets(plan) == {"narrow": "b"}
    (item,) = plan["unplaceable"]
    assert item["vm"] == "wide" and item["constraint"] == "vcpus"
    assert plan["load_after"]["b"]["vcpus_committed"] == 2
    assert plan["load_after"]["b"]["vcpu_ratio"] == 2.0


def test_evacuate_anti_affinity_picks_another_host_then_binds():
    hosts = [host("a"), host("b"), host("c", memory=5000)]
    vms = [vm("web1", "a", anti_affinity_group="web"), vm("web2", "b", anti_affinity_group="web")]
    plan = evacuate(hosts, vms, "a")
    assert targets(plan) == {"web1": "c"}
    vms.append(vm("web3", "c", anti_affinity_group="web"))
    plan = evacuate(hosts, vms, "a")
    assert plan["moves"] == []
    assert plan["unplaceable"][0]["constraint"] == "anti_affinity"
    assert "web" in plan["unplaceable"][0]["reason"]


def test_evacuate_anti_affinity_groups_option():
    hosts = [host("a"), host("b"), host("c", memory=2000)]
    vms = [vm("db1", "a"), vm("db2", "b")]
    assert targets(evacuate(hosts, vms, "a")) == {"db1": "b"}
    plan = evacuate(hosts, vms, "a", anti_affinity_groups={"databases": ["db1", "db2"]})
    assert targets(plan) == {"db1": "c"}


def test_evacuate_never_targets_maintenance_excluded_or_evacuated_hosts():
    hosts = [host("a"), host("b", maintenance=True), host("c", excluded=True), host("d"), host("e", memory=2000)]
    plan = evacuate(hosts, [vm("one", "a", 500), vm("two", "d", 500)], "a", "d")
    assert set(targets(plan).values()) == {"e"}
    plan = evacuate(hosts[:3], [vm("one", "a")], "a")
    assert plan["moves"] == []
    assert plan["unplaceable"][0]["constraint"] == "no_eligible_host"


def test_evacuate_reports_pinned_and_moves_recently_moved():
    hosts = [host("a"), host("b")]
    vms = [vm("stuck", "a", pinned=True), vm("disk", "a", pinned="local disk"), vm("fresh", "a", recently_moved=True)]
    plan = evacuate(hosts, vms, "a")
    assert targets(plan) == {"fresh": "b"}
    assert plan["not_moved"] == [
        {"vm": "disk", "host": "a", "reason": "not migratable: local disk"},
        {"vm": "stuck", "host": "a", "reason": "pinned"},
    ]
    assert plan["load_after"]["a"]["memory_committed_mib"] == 2000


# --- rebalance --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rebalance_reaches_threshold_and_a_second_plan_moves_nothing(seed):
    hosts, vms = skewed_cluster(seed)
    plan = rebalance(hosts, vms)
    assert plan["spread_before_percent"] > 10
    assert plan["spread_after_percent"] <= 10
    moved = [move["vm"] for move in plan["moves"]]
    assert len(moved) == len(set(moved))
    for move in plan["moves"]:
        assert move["from"] != move["to"]
    again = rebalance(hosts, after_moves(vms, plan))
    assert again["moves"] == []
    assert again["spread_before_percent"] == plan["spread_after_percent"]


def test_rebalance_balanced_cluster_plans_nothing():
    plan = rebalance([host("a"), host("b")], [vm("one", "a", 3000), vm("two", "b", 2500)])
    assert plan["moves"] == [] and plan["waves"] == []
    assert plan["spread_before_percent"] == plan["spread_after_percent"] == 5.0


def test_rebalance_does_not_swap_a_single_vm_across():
    plan = rebalance([host("a"), host("b")], [vm("big", "a", 8000)])
    assert plan["moves"] == []
    assert plan["spread_after_percent"] == 80.0


def test_rebalance_first_move_is_the_one_that_lowers_the_spread_most():
    rng = random.Random(7)
    hosts = [host("a"), host("b"), host("c")]
    vms = [vm("a%d" % n, "a", rng.randint(300, 2500)) for n in range(5)] + [vm("c0", "c", 2500)]
    plan = rebalance(hosts, vms, spread_threshold_percent=0)
    load = {"a": sum(item["memory_mib"] for item in vms[:5]), "b": 0, "c": 2500}
    best = None
    for item in vms[:5]:
        for target in ("b", "c"):
            after = dict(load, a=load["a"] - item["memory_mib"])
            after[target] += item["memory_mib"]
            spread = (max(after.values()) - min(after.values())) / 100.0
            best = spread if best is None else min(best, spread)
    first = plan["moves"][0]
    after = dict(load, a=load["a"] - first["memory_mib"])
    after[first["to"]] += first["memory_mib"]
    assert (max(after.values()) - min(after.values())) / 100.0 == pytest.approx(best)


def test_rebalance_tie_between_equal_vms_moves_the_first_name():
    plan = rebalance([host("a"), host("b")], [vm("vm-b", "a", 2000), vm("vm-a", "a", 2000)])
    assert targets(plan) == {"vm-a": "b"}


def test_rebalance_holds_recently_moved_vms():
    hosts = [host("a"), host("b")]
    vms = [vm("fresh", "a", 3000, recently_moved=True), vm("old", "a", 500)]
    plan = rebalance(hosts, vms)
    assert targets(plan) == {"old": "b"}
    assert plan["not_moved"] == [{"vm": "fresh", "host": "a",
                                  "reason": "moved recently; hold_recently_moved=true holds it back"}]
    assert targets(rebalance(hosts, vms, hold_recently_moved=False)) == {"fresh": "b"}


def test_rebalance_never_moves_pinned_vms():
    plan = rebalance([host("a"), host("b")], [vm("stuck", "a", 3000, pinned="pci passthrough"), vm("x", "a", 500)])
    assert targets(plan) == {"x": "b"}
    assert plan["not_moved"][0]["reason"] == "not migratable: pci passthrough"


def test_rebalance_leaves_maintenance_and_excluded_hosts_out():
    hosts = [host("a"), host("b"), host("m", maintenance=True), host("x", excluded=True)]
    vms = [vm("a1", "a", 3000), vm("a2", "a", 3000), vm("m1", "m", 9000), vm("x1", "x", 9000)]
    plan = rebalance(hosts, vms)
    assert targets(plan) == {"a1": "b"}
    assert plan["spread_before_percent"] == 60.0
    assert plan["spread_after_percent"] == 0.0


def test_rebalance_respects_memory_vcpu_and_anti_affinity():
    hosts = [host("a", cpus=8), host("b", cpus=1), host("c", reserve_mib=9500), host("d")]
    vms = [vm("g1", "a", 3000, vcpus=2, anti_affinity_group="g"), vm("g2", "d", 100, anti_affinity_group="g"),
           vm("wide", "a", 3000, vcpus=8)]
    plan = rebalance(hosts, vms, vcpu_overcommit_ratio=1.0, spread_threshold_percent=0)
    # b takes 1 vCPU only, c 500 MiB only, d holds group g: nothing can go anywhere.
    assert plan["moves"] == []


def test_same_input_in_another_order_gives_the_same_plan():
    hosts, vms = skewed_cluster(11)
    plan = rebalance(hosts, vms)
    rng = random.Random(5)
    shuffled_hosts, shuffled_vms = hosts[:], vms[:]
    rng.shuffle(shuffled_hosts)
    rng.shuffle(shuffled_vms)
    assert rebalance(shuffled_hosts, shuffled_vms) == plan
    assert plan["moves"]


# --- waves and estimates ----------------------------------------------------------------------------------------


def _fake_moves(*pairs: t.Tuple[str, str]) -> t.List[t.Tuple[VmSpec, str, str]]:
    return [(VmSpec("vm%d" % index, source, 1000, 1), source, target) for index, (source, target) in enumerate(pairs)]


def test_waves_limit_outgoing_per_host():
    hosts = [host("a"), host("b"), host("c"), host("d"), host("e")]
    vms = [vm("v%d" % n, "a", 1000) for n in range(4)]
    plan = evacuate(hosts, vms, "a", max_parallel_total=10)
    assert [len(wave) for wave in plan["waves"]] == [1, 1, 1, 1]
    plan = evacuate(hosts, vms, "a", max_parallel_total=10, max_parallel_per_host=2)
    assert [len(wave) for wave in plan["waves"]] == [2, 2]


def test_waves_limit_incoming_per_host_and_total():
    hosts = [host("a"), host("b"), host("c"), host("t", memory=40000)]
    vms = [vm("va", "a"), vm("vb", "b"), vm("vc", "c")]
    plan = evacuate(hosts, vms, "a", "b", "c", max_parallel_total=10)
    assert [len(wave) for wave in plan["waves"]] == [1, 1, 1]
    hosts = hosts[:3] + [host("t1"), host("t2"), host("t3")]
    plan = evacuate(hosts, vms, "a", "b", "c", max_parallel_total=2)
    assert [len(wave) for wave in plan["waves"]] == [2, 1]
    assert [move["wave"] for move in plan["moves"]] == [1, 1, 2]


def test_a_move_into_a_host_waits_for_the_moves_out_of_it_planned_before():
    options = PlanOptions(mode="rebalance", max_parallel_per_host=5, max_parallel_total=5)
    assert _assign_waves(_fake_moves(("a", "b"), ("c", "a")), options) == [0, 1]
    # A move into a host planned before a move out of it does not wait.
    assert _assign_waves(_fake_moves(("c", "a"), ("a", "b")), options) == [0, 0]
    # A later free slot is taken by a later move that does not depend on anything.
    assert _assign_waves(_fake_moves(("a", "b"), ("c", "a"), ("d", "e")), options) == [0, 1, 0]


def test_estimates_come_from_the_convergence_model_and_waves_add_up():
    hosts = [host("a"), host("b"), host("c")]
    vms = [vm("big", "a", 4000, dirty_rate_mibps=50.0), vm("small", "a", 1000)]
    plan = evacuate(hosts, vms, "a", bandwidth_mibps=500)
    by_vm = {move["vm"]: move for move in plan["moves"]}
    assert by_vm["big"]["estimated_s"] == round(estimate(4000, 50.0, 500), 1)
    assert by_vm["small"]["estimated_s"] == round(estimate(1000, 0.0, 500), 1)
    assert by_vm["big"]["uuid"] == "uuid-big"
    assert plan["estimated_total_s"] == round(estimate(4000, 50.0, 500) + estimate(1000, 0.0, 500), 1)
    assert plan["wave_estimated_s"] == [by_vm["big"]["estimated_s"], by_vm["small"]["estimated_s"]]


def test_wave_time_is_its_longest_move():
    hosts = [host("a"), host("b"), host("c"), host("d")]
    plan = evacuate(hosts, [vm("x", "a", 4000), vm("y", "b", 1000)], "a", "b")
    assert plan["waves"] == [["x", "y"]]
    assert plan["estimated_total_s"] == round(estimate(4000), 1)


def test_moves_through_one_host_at_once_share_its_bandwidth():
    # Two moves out of a in one wave: a sends both copies over one link, so the wave takes both copies.
    hosts = [host("a"), host("b"), host("c")]
    plan = evacuate(hosts, [vm("x", "a", 1000), vm("y", "a", 1000)], "a", max_parallel_per_host=2,
                    bandwidth_mibps=100)
    assert plan["waves"] == [["x", "y"]]
    copy_s = estimate(1000, bandwidth_mibps=100, overhead_s=0)
    assert plan["estimated_total_s"] == round(DEFAULT_MOVE_OVERHEAD_S + 2 * copy_s, 1)


def test_each_move_costs_its_overhead_besides_the_copy():
    hosts = [host("a"), host("b"), host("c")]
    vms = [vm("x", "a", 1000), vm("y", "a", 1000)]
    copy_only = evacuate(hosts, vms, "a", move_overhead_s=0)
    slow_setup = evacuate(hosts, vms, "a", move_overhead_s=10)
    assert [move["estimated_s"] for move in copy_only["moves"]] == [round(estimate(1000, overhead_s=0), 1)] * 2
    assert [move["estimated_s"] for move in slow_setup["moves"]] == [round(estimate(1000, overhead_s=10), 1)] * 2
    # One move out of a at a time: two waves, each paying the overhead.
    assert len(slow_setup["waves"]) == 2
    assert slow_setup["estimated_total_s"] == round(copy_only["estimated_total_s"] + 20, 1)


def test_the_overhead_can_make_a_small_move_miss_its_window():
    copy_s = estimate(128, overhead_s=0)
    assert copy_s < 2
    window = {"window_s": copy_s + 2}
    assert evacuate([host("a"), host("b")], [vm("x", "a", 128)], "a", move_overhead_s=0, **window)["fits_window"]
    assert evacuate([host("a"), host("b")], [vm("x", "a", 128)], "a", **window)["fits_window"] is False


def test_a_negative_overhead_is_refused():
    with pytest.raises(PlanError) as caught:
        evacuate([host("a"), host("b")], [vm("x", "a", 128)], "a", move_overhead_s=-1)
    assert caught.value.option == "move_overhead_s"
    assert "move_overhead_s must be at least 0" in str(caught.value)


@pytest.mark.parametrize("window_s, fits", [(None, None), (1000.0, True), (1.0, False)])
def test_window_verdict(window_s, fits):
    plan = evacuate([host("a"), host("b")], [vm("x", "a", 4000)], "a", window_s=window_s)
    assert plan["fits_window"] is fits
    assert plan["window_s"] == window_s
    if fits is not None:
        assert ("fits the" if fits else "does not fit the") in plan["summary"]


def test_result_shape_and_summary():
    plan = evacuate([host("a"), host("b")], [vm("x", "a", 2500, vcpus=2)], "a")
    assert plan["moves"] == [{"vm": "x", "uuid": "uuid-x", "from": "a", "to": "b", "memory_mib": 2500,
                              "disk_mib": 0, "estimated_s": round(estimate(2500), 1), "wave": 1}]
    assert plan["load_before"]["a"] == {"memory_committed_mib": 2500, "memory_capacity_mib": 10000,
                                        "memory_free_mib": 7500, "memory_percent": 25.0,
                                        "vcpus_committed": 2, "vcpu_ratio": 0.5}
    assert plan["summary"].startswith("evacuate: 1 move in 1 wave, about ")


# --- input checks -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hosts, vms, options, option", [
    ([], [], {"mode": "rebalance"}, "hosts"),
    ([host("a")], {}, {"mode": "rebalance"}, "vms"),
    ([host("a", memory=0)], [], {"mode": "rebalance"}, "hosts[0].memory_capacity_mib"),
    ([host("a", reserve_mib=-1)], [], {"mode": "rebalance"}, "hosts[0].reserve_mib"),
    ([host("a", cpus=0)], [], {"mode": "rebalance"}, "hosts[0].cpus"),
    ([host("a", memory=True)], [], {"mode": "rebalance"}, "hosts[0].memory_capacity_mib"),
    ([host("a", maintenance="yes")], [], {"mode": "rebalance"}, "hosts[0].maintenance"),
    ([host("a"), host("a")], [], {"mode": "rebalance"}, "hosts[1].name"),
    (["a"], [], {"mode": "rebalance"}, "hosts[0]"),
    ([host("a")], [vm("x", "a", -5)], {"mode": "rebalance"}, "vms[0].memory_mib"),
    ([host("a")], [vm("x", "a", vcpus=0)], {"mode": "rebalance"}, "vms[0].vcpus"),
    ([host("a")], [vm("x", "a", pinned=3)], {"mode": "rebalance"}, "vms[0].pinned"),
    ([host("a")], [vm("x", "a", dirty_rate_mibps=-1)], {"mode": "rebalance"}, "vms[0].dirty_rate_mibps"),
    ([host("a")], [vm("x", "nowhere")], {"mode": "rebalance"}, "vms[0].host"),
    ([host("a")], [vm("x", "a"), vm("x", "a")], {"mode": "rebalance"}, "vms[1].name"),
    ([host("a")], [], {"mode": "drain"}, "mode"),
    ([host("a")], [], {"mode": "evacuate"}, "evacuate_hosts"),
    ([host("a")], [], {"mode": "evacuate", "evacuate_hosts": ["b"]}, "evacuate_hosts"),
    ([host("a")], [], {"mode": "rebalance", "evacuate_hosts": ["a"]}, "evacuate_hosts"),
    ([host("a")], [], {"mode": "rebalance", "anti_affinity_groups": {"g": ["ghost"]}}, "anti_affinity_groups.g"),
    ([host("a")], [], {"mode": "rebalance", "anti_affinity_groups": {"g": "x"}}, "anti_affinity_groups.g"),
    ([host("a")], [], {"mode": "rebalance", "vcpu_overcommit_ratio": 0}, "vcpu_overcommit_ratio"),
    ([host("a")], [], {"mode": "rebalance", "spread_threshold_percent": -1}, "spread_threshold_percent"),
    ([host("a")], [], {"mode": "rebalance", "max_parallel_per_host": 0}, "max_parallel_per_host"),
    ([host("a")], [], {"mode": "rebalance", "max_parallel_total": 0}, "max_parallel_total"),
    ([host("a")], [], {"mode": "rebalance", "bandwidth_mibps": 0}, "bandwidth_mibps"),
    ([host("a")], [], {"mode": "rebalance", "max_downtime_ms": -300}, "max_downtime_ms"),
    ([host("a")], [], {"mode": "rebalance", "window_s": -1}, "window_s"),
    ([host("a")], [], {"mode": "rebalance", "hold_recently_moved": "no"}, "hold_recently_moved"),
])
def test_invalid_input_names_the_option(hosts, vms, options, option):
    with pytest.raises(PlanError) as caught:
        plan_from_data(hosts, vms, options)
    assert caught.value.option == option
    assert option.split("[")[0].split(".")[0] in str(caught.value)


def test_none_options_take_their_defaults():
    plan = plan_from_data([host("a"), host("b")], [vm("x", "a", 5000)],
                          {"mode": "rebalance", "window_s": None, "vcpu_overcommit_ratio": None,
                           "evacuate_hosts": None, "anti_affinity_groups": None})
    assert plan.window_s is None and plan.fits_window is None
    assert plan.spread_threshold_percent == 10.0


def test_a_vm_with_local_disks_to_copy_takes_their_copy_longer():
    hosts = [host("a"), host("b"), host("c")]
    plan = evacuate(hosts, [vm("plain", "a", 1000), vm("disk", "a", 1000, disk_mib=5000)], "a", bandwidth_mibps=500)
    by_vm = {move["vm"]: move for move in plan["moves"]}
    # The storage copy runs first, at the same bandwidth: 5000 MiB / 500 MiB/s = 10 s more.
    assert by_vm["disk"]["estimated_s"] == round(estimate(1000, 0.0, 500) + 10.0, 1)
    assert by_vm["plain"]["estimated_s"] == round(estimate(1000, 0.0, 500), 1)


def test_disk_mib_must_not_be_negative():
    with pytest.raises(PlanError, match="disk_mib"):
        evacuate([host("a"), host("b")], [vm("x", "a", 1000, disk_mib=-1)], "a")


def recover(hosts: t.List[t.Dict[str, t.Any]], vms: t.List[t.Dict[str, t.Any]], *names: str,
            **options: t.Any) -> t.Dict[str, t.Any]:
    return plan_from_data(hosts, vms, dict(options, mode="recover", failed_hosts=list(names))).to_dict()


def test_a_recovery_restarts_a_failed_hosts_vms_on_the_survivors_never_on_a_failed_host():
    hosts = [host("hv1"), host("hv2"), host("hv3", memory=8000)]
    vms = [vm("a", "hv1", 3000), vm("b", "hv1", 2000), vm("c", "hv2", 1000)]
    plan = recover(hosts, vms, "hv1")
    assert plan["mode"] == "recover"
    # Largest first to the most free memory: a to hv2 (9000 free against 8000), then b to hv3 (8000 against 6000).
    assert targets(plan) == {"a": "hv2", "b": "hv3"}
    assert all(move["from"] == "hv1" for move in plan["moves"])
    assert plan["summary"].startswith("recover: 2 restarts in 1 wave")


def test_short_of_capacity_the_highest_restart_priority_is_placed_first():
    hosts = [host("hv1"), host("hv2", memory=3000)]
    vms = [vm("big", "hv1", 2500), vm("vital", "hv1", 1000, restart_priority=10), vm("other", "hv1", 1500)]
    plan = recover(hosts, vms, "hv1")
    # By size alone "big" would take hv2 and nothing else would fit; by priority "vital" goes first.
    assert targets(plan) == {"vital": "hv2", "other": "hv2"}
    assert [item["vm"] for item in plan["unplaceable"]] == ["big"]
    assert plan["unplaceable"][0]["constraint"] == "memory"


def test_a_recovery_keeps_anti_affinity_and_leaves_pinned_vms():
    hosts = [host("hv1"), host("hv2"), host("hv3")]
    vms = [vm("web1", "hv1", anti_affinity_group="web"), vm("web2", "hv2", anti_affinity_group="web"),
           vm("local", "hv1", pinned="a disk on the failed host")]
    plan = recover(hosts, vms, "hv1")
    assert targets(plan) == {"web1": "hv3"}
    assert plan["not_moved"] == [{"vm": "local", "host": "hv1", "reason": "not migratable: a disk on the failed host"}]


def test_restarts_from_one_dead_host_run_side_by_side_within_the_receivers_limits():
    hosts = [host("hv1"), host("hv2"), host("hv3")]
    vms = [vm("v%d" % index, "hv1") for index in range(4)]
    plan = recover(hosts, vms, "hv1", max_parallel_per_host=1, max_parallel_total=4)
    # The dead source does not serialize them: two receivers, one restart each per wave.
    assert plan["waves"] == [["v0", "v1"], ["v2", "v3"]]
    assert all(move["estimated_s"] == DEFAULT_MOVE_OVERHEAD_S for move in plan["moves"])


@pytest.mark.parametrize("options, option", [
    ({"mode": "recover"}, "failed_hosts"),
    ({"mode": "recover", "failed_hosts": ["hv1"], "evacuate_hosts": ["hv1"]}, "evacuate_hosts"),
    ({"mode": "evacuate", "evacuate_hosts": ["hv1"], "failed_hosts": ["hv2"]}, "failed_hosts"),
    ({"mode": "recover", "failed_hosts": ["hv9"]}, "failed_hosts"),
])
def test_recovery_inputs_that_do_not_add_up_are_refused_naming_the_option(options, option):
    with pytest.raises(PlanError) as caught:
        plan_from_data([host("hv1"), host("hv2")], [vm("a", "hv1")], options)
    assert caught.value.option == option


def test_a_negative_restart_priority_is_refused():
    with pytest.raises(PlanError) as caught:
        plan_from_data([host("hv1"), host("hv2")], [vm("a", "hv1", restart_priority=-1)],
                       {"mode": "recover", "failed_hosts": ["hv1"]})
    assert caught.value.option == "vms[0].restart_priority"
