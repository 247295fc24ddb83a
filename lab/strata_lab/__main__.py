"""strata-lab: a multi-host libvirt lab on one machine.

    strata-lab deps                        install the Debian packages the lab needs
    strata-lab up [--hosts 3] [--transport ssh] [--stack hv2=trixie|all=stock ...]
                                           start the hosts (idempotent), write the inventory whose
                                           URIs use this transport (ssh, tls or tcp; every host has all);
                                           --stack runs a host on libvirt 11 / QEMU 10 from a cached root
    strata-lab stack build trixie          (re)build the cached root of a newer stack
    strata-lab controller run [--cwd DIR] -- COMMAND...
                                           run COMMAND on a Debian 13 controller (Python 3.13) made from
                                           the trixie root, in an overlay that keeps what it writes
    strata-lab status                      hosts, their URIs and guests
    strata-lab guest create NAME --host hv1 [--memory-mib 256] [--workload idle]
                                           [--anti-affinity GROUP] [--pinned REASON]
                                           [--disk-mib 64 --disk-pool local|small|shared|nbd]
    strata-lab guest check-disk NAME       the guest's disk workload read back every block intact
    strata-lab guest check-image NAME      every block the workload wrote to its shared disk image is intact
                                           (the guest not running: after a host crash)
    strata-lab guest crash NAME            SIGKILL its QEMU, as a crash would
    strata-lab guest delete NAME           destroy and undefine it wherever it is
    strata-lab guest list
    strata-lab network create NAME --host hv1   an isolated network on one host only
    strata-lab host add hv4 [--stack trixie]
                                           add one host to a running lab (the others keep running)
    strata-lab host set-stack hv2 trixie   restart an empty host on another stack, as an upgrade would
    strata-lab host remove hv4             stop it and take it out of the lab (it must run no guest)
    strata-lab host kill hv2               SIGKILL one host's libvirtd, as a crash would (guests keep running)
    strata-lab host crash hv2              SIGKILL its libvirtd, sshd, virtlockd and every guest QEMU at once
                                           (a power loss)
    strata-lab host isolate hv2            SIGSTOP its libvirtd, sshd and virtlockd: cut off, guests running
    strata-lab host reconnect hv2          let it go on
    strata-lab host start hv2              restart a killed or crashed host, taking back its running guests
    strata-lab host sshd-stop hv2          SIGSTOP the host's sshd: new ssh connections hang
    strata-lab host sshd-cont hv2          let it go on
    strata-lab host fill-pool hv2 [--leave-mib 0]   fill hv2's pool 'small' (a 192 MiB tmpfs)
    strata-lab host free-pool hv2          empty it again
    strata-lab down [--purge]              stop every lab process; --purge forgets guests
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

import signal

from . import controller, guests, hosts, packages, stack, storage, transports
from .config import DEFAULT_CACHE_DIR, DEFAULT_LAB_DIR, HostSpec, LabError, LabState, make_host_spec
from .image import build_image

LAB_TOOL = Path(__file__).resolve().parent.parent / "strata-lab"


def cmd_deps(_args: argparse.Namespace) -> None:
    installed = packages.ensure_packages(packages.LAB_PACKAGES + packages.BUILD_PACKAGES)
    print("installed: " + (" ".join(installed) if installed else "nothing (all present)"))


def cmd_up(args: argparse.Namespace) -> None:
    packages.ensure_packages(packages.LAB_PACKAGES)
    lab_dir: Path = args.lab_dir
    lab_dir.mkdir(parents=True, exist_ok=True)
    image = build_image(args.cache_dir)
    recorded = _recorded_stacks(lab_dir)
    stacks = _host_stacks(args.stack, args.hosts, recorded)
    state = LabState(
        lab_dir=str(lab_dir),
        cache_dir=str(args.cache_dir),
        domain_type=args.domain_type,
        # With three hosts or more, the last one is the "legacy" host (see docs/lab.md).
        hosts=[
            _host_spec(lab_dir, args.cache_dir, i, args.capacity_mib, stacks[f"hv{i}"],
                       legacy=args.hosts >= 3 and i == args.hosts)
            for i in range(1, args.hosts + 1)
        ],
        kernel=str(image.kernel),
        initrd=str(image.initrd),
        transport=args.transport,
    )
    orphans = {host.name: hosts.orphaned_guests(host) for host in state.hosts}
    for host in state.hosts:  # before anything changes
        _refuse_orphaning(host, orphans[host.name])
        if host.name in recorded:
            hosts.refuse_lockd_without_virtlockd(host)
    surplus = _surplus_hosts(lab_dir, state)
    for host in surplus:
        _refuse_removing_orphans(host)
    for host in surplus:
        hosts.stop_host(host)  # so `up --hosts 2` leaves no third daemon
    for host in state.hosts:
        if host.name not in recorded:
            hosts.forget_operator_settings(host)  # new to the lab: not an earlier host's settings
    state.save()
    transports.ensure_ssh(state)
    transports.ensure_pki(state)
    if storage.ensure_nbd_server(state):
        print(f"storage: NBD server started at nbd://{storage.NBD_ADDRESS}:{storage.NBD_PORT}")
    for host in state.hosts:
        uri = transports.host_uri(state, host, state.transport)  # what the inventory names
        if hosts.host_is_up(host) and hosts.host_config_current(host):
            print(f"{host.name}: up at {uri}")
        else:
            print(f"{host.name}: {_restart_host(host, orphans[host.name])} at {uri}")
        hosts.configure_host(host, state.shared_pool_dir)
    write_inventory(state)
    print(f"inventory: {lab_dir / 'inventory.yml'}")


def _refuse_orphaning(host: HostSpec, orphans: list[int]) -> None:
    """A host whose libvirtd is gone while its guests' QEMU runs (orphans: their pids) cannot change its
    stack or settings: stopping it could not stop them, and a new libvirtd would not know them (started
    again, a guest would run twice on its disk). Called before anything is saved."""
    if orphans and not hosts.host_config_current(host):
        raise _orphans_error(host, orphans, "move them away before changing its stack or settings")


def _orphans_error(host: HostSpec, orphans: list[int], refused: str) -> LabError:
    """The refusal of a change to a host whose guests (QEMU pids `orphans`) run without its libvirtd."""
    return LabError(f"{host.name}'s libvirtd is down while its guests run (QEMU pids {orphans}): "
                    f"`strata-lab host start {host.name}` takes them back; {refused}")


def _restart_host(host: HostSpec, orphans: list[int]) -> str:
    """Start the host's libvirtd, which is down or not current; says what it did. With orphans (guests'
    QEMU pids whose libvirtd is gone) the new libvirtd takes them back, as `host start` does; otherwise
    whatever a killed run left half-alive is stopped first."""
    _refuse_orphaning(host, orphans)  # callers refuse earlier, before saving; this keeps the rule here too
    if orphans:
        hosts.start_host(host, keep_running=True)
        return "restarted, its running guests kept,"
    hosts.stop_host(host)
    hosts.start_host(host)
    return "started"


def _host_stacks(requests: list[str] | None, host_count: int, recorded: dict[str, str]) -> dict[str, str]:
    """{host: stack} for hv1..hvN from --stack HOST=STACK (or all=STACK) words; a host not named keeps
    the stack it ran before (an upgraded host stays upgraded), else runs the stock one."""
    stacks = {f"hv{i}": recorded.get(f"hv{i}", stack.STOCK) for i in range(1, host_count + 1)}
    for word in requests or []:
        host, _sep, name = word.partition("=")
        if not name or (host != "all" and host not in stacks):
            raise LabError(f"--stack {word!r}: expected HOST=STACK with HOST one of hv1..hv{host_count} or all")
        stack.check_stack(name)
        for key in stacks if host == "all" else [host]:
            stacks[key] = name
    return stacks


def _recorded_stacks(lab_dir: Path) -> dict[str, str]:
    try:
        return {host.name: host.stack for host in LabState.load(lab_dir).hosts}
    except LabError:
        return {}


def _host_spec(lab_dir: Path, cache_dir: Path, index: int, capacity_mib: int, stack_name: str,
               legacy: bool = False) -> HostSpec:
    """Host hvINDEX on the named stack; a stack other than the stock one is restored from the cache first."""
    root = stack.ensure_stack(cache_dir, lab_dir, stack_name) if stack_name != stack.STOCK else None
    return make_host_spec(
        lab_dir, index, capacity_mib, legacy=legacy, stack=stack_name, stack_root=str(root.root) if root else "",
        # A chrooted host sees the lab's and the cache's folders at the same paths: guests' XML names them.
        shared_paths=(str(lab_dir.absolute()), str(cache_dir.absolute())) if root else (),
    )


def cmd_controller_run(args: argparse.Namespace) -> int:
    return controller.run_in_controller(args.cache_dir, args.lab_dir, args.command, args.cwd, args.timeout_s)


def cmd_stack(args: argparse.Namespace) -> None:
    stack.check_stack(args.name)
    if args.name == stack.STOCK:
        raise LabError("the stock stack is the machine's own libvirt: there is nothing to build")
    with stack.build_lock(args.cache_dir):
        print(json.dumps(stack.build_stack(args.cache_dir, args.name), indent=2))


def _surplus_hosts(lab_dir: Path, state: LabState) -> list[HostSpec]:
    """Hosts of an earlier, larger lab that `state` leaves out."""
    try:
        previous = LabState.load(lab_dir)
    except LabError:
        return []
    wanted = {h.name for h in state.hosts}
    return [host for host in previous.hosts if host.name not in wanted]


def _refuse_removing_orphans(host: HostSpec) -> None:
    """A host leaving the lab while its libvirtd is gone and its guests' QEMU runs would leave them running
    unseen, defined nowhere: refused, before anything is saved."""
    orphans = hosts.orphaned_guests(host)
    if orphans:
        raise _orphans_error(host, orphans, f"move or delete them before taking {host.name} out of the lab")


def write_inventory(state: LabState) -> None:
    lines = [
        "# Written by `strata-lab up`: the lab's hypervisors, reached from the controller.",
        "all:",
        "  children:",
        "    hypervisors:",
        "      hosts:",
    ]
    for host in state.hosts:
        lines += [
            f"        {host.name}:",
            "          ansible_connection: local",
            "          ansible_python_interpreter: \"{{ ansible_playbook_python }}\"",
            f"          strata_libvirt_uri: {transports.host_uri(state, host, state.transport)}",
            f"          strata_migration_address: {host.address}",
            f"          strata_memory_capacity_mib: {host.memory_capacity_mib}",
            f"          strata_lab_stack: {host.stack}",
        ]
    lines += [
        "  vars:",
        f"    strata_lab_dir: {state.lab_dir}",
        f"    strata_lab_tool: {LAB_TOOL}",
        "",
    ]
    (Path(state.lab_dir) / "inventory.yml").write_text("\n".join(lines))
    # ansible-test reads variables for integration targets from this file.
    config = {
        "strata_lab_dir": state.lab_dir,
        "strata_lab_tool": str(LAB_TOOL),
        "strata_lab_transport": state.transport,
        "strata_lab_ssh_dir": str(state.ssh_dir),
        "strata_lab_pki_dir": str(state.pki_dir),
        "strata_lab_hosts": [
            {
                "name": h.name,
                "uri": transports.host_uri(state, h, state.transport),
                "uris": {name: transports.host_uri(state, h, name) for name in transports.TRANSPORTS},
                "address": h.address,
                "memory_capacity_mib": h.memory_capacity_mib,
            }
            for h in state.hosts
        ],
        # Apart from strata_lab_hosts, whose entries tests hand to modules as they are.
        "strata_lab_host_stacks": {h.name: h.stack for h in state.hosts},
        # Whether the hosts' guests can be given a vCPU bandwidth (cgroup v1's cpu controller).
        "strata_lab_vcpu_bandwidth": hosts.cpu_hierarchy() is not None,
    }
    (Path(state.lab_dir) / "integration_config.yml").write_text(json.dumps(config, indent=2) + "\n")


def cmd_status(args: argparse.Namespace) -> None:
    state = LabState.load(args.lab_dir)
    report = []
    for host in state.hosts:
        up = hosts.host_is_up(host)
        entry = {"name": host.name, "uri": transports.host_uri(state, host, state.transport), "up": up, "guests": []}
        if up:
            entry["guests"] = guests.list_guests_on(host)
        report.append(entry)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for entry in report:
        print(f"{entry['name']:5} {'up  ' if entry['up'] else 'down'} {entry['uri']}")
        for guest in entry["guests"]:
            print(f"      {guest['name']:24} {guest['state']}")


def cmd_down(args: argparse.Namespace) -> None:
    try:
        state = LabState.load(args.lab_dir)
    except LabError:
        print("no lab state; nothing to stop")
        return
    for host in state.hosts:
        hosts.stop_host(host)
        print(f"{host.name}: stopped")
    # QEMU outlives a killed libvirtd; nothing of the lab may be left running.
    leftovers = hosts.lab_qemu_pids([state.lab_dir, state.cache_dir])
    if leftovers:
        hosts.kill_pids(leftovers)
        print(f"killed {len(leftovers)} leftover QEMU process(es)")
    # After the guests: a QEMU still using a network disk would see its server vanish.
    if storage.stop_nbd_server(state):
        print("storage: NBD server stopped")
    if args.purge:
        shutil.rmtree(Path(state.lab_dir) / "hosts", ignore_errors=True)
        shutil.rmtree(state.consoles_dir, ignore_errors=True)
        print("purged host state and consoles")


def cmd_network(args: argparse.Namespace) -> None:
    host = LabState.load(args.lab_dir).host(args.host)
    if args.network_command == "create":
        changed = hosts.ensure_network(host, args.name)
    else:
        changed = hosts.delete_network(host, args.name)
    print(json.dumps({"network": args.name, "host": host.name, "changed": changed}))


def _start_and_list(state: LabState, host: HostSpec, orphans: list[int]) -> None:
    """Start one host of the lab (see _restart_host), give it the lab's resources, and rewrite the inventory."""
    transports.ensure_ssh(state)
    transports.ensure_pki(state)
    _restart_host(host, orphans)
    hosts.configure_host(host, state.shared_pool_dir)
    write_inventory(state)


def cmd_host_add(args: argparse.Namespace) -> None:
    state = LabState.load(args.lab_dir)
    name = args.name
    if not re.fullmatch(r"hv[1-8]", name):
        raise LabError(f"host name {name!r}: expected one of hv1..hv8")
    existing = next((h for h in state.hosts if h.name == name), None)
    if existing is not None:
        if existing.stack != args.stack:
            raise LabError(f"{name} already runs the {existing.stack} stack: `host set-stack {name} {args.stack}` "
                           "changes it")
        changed = not (hosts.host_is_up(existing) and hosts.host_config_current(existing))
        if changed:
            _start_and_list(state, existing, hosts.orphaned_guests(existing))
        print(json.dumps({"host": name, "stack": existing.stack, "uri": transports.host_uri(state, existing, state.transport),
                          "changed": changed}))
        return
    host = _host_spec(Path(state.lab_dir), Path(state.cache_dir), int(name[2:]),
                      state.hosts[0].memory_capacity_mib if state.hosts else 3072, args.stack)
    orphans = hosts.orphaned_guests(host)  # guests of a host removed while its libvirtd was gone
    _refuse_orphaning(host, orphans)
    hosts.forget_operator_settings(host)
    state.hosts = sorted(state.hosts + [host], key=lambda h: h.index)
    state.save()
    _start_and_list(state, host, orphans)
    print(json.dumps({"host": name, "stack": host.stack, "uri": transports.host_uri(state, host, state.transport),
                      "changed": True}))


def cmd_host_set_stack(args: argparse.Namespace) -> None:
    """Restart an empty host on another stack, as an upgrade of its hypervisor packages would.

    Its persistent guests, networks and pools stay defined; a host still running a guest is refused,
    since a stop would take the guest down."""
    state = LabState.load(args.lab_dir)
    host = state.host(args.name)
    stack.check_stack(args.stack)
    up = hosts.host_is_up(host)
    if host.stack == args.stack and up and hosts.host_config_current(host):
        print(json.dumps({"host": host.name, "stack": host.stack, "changed": False}))
        return
    if up:
        running = hosts.virsh(host.uri, "list", "--name", check=False).split()
        if running:
            raise LabError(f"{host.name} still runs {', '.join(running)}: move them away before changing its stack")
    new_host = _host_spec(Path(state.lab_dir), Path(state.cache_dir), host.index, host.memory_capacity_mib, args.stack,
                          legacy=bool(host.cpu_models_missing))
    orphans = [] if up else hosts.orphaned_guests(host)
    _refuse_orphaning(new_host, orphans)
    hosts.refuse_lockd_without_virtlockd(new_host)
    state.hosts = [new_host if h.name == host.name else h for h in state.hosts]
    state.save()
    _start_and_list(state, new_host, orphans)
    print(json.dumps({"host": host.name, "stack": new_host.stack, "previous_stack": host.stack, "changed": True}))


def cmd_host_remove(args: argparse.Namespace) -> None:
    state = LabState.load(args.lab_dir)
    host = next((h for h in state.hosts if h.name == args.name), None)
    if host is None:
        print(json.dumps({"host": args.name, "changed": False}))
        return
    if hosts.host_is_up(host):
        running = hosts.virsh(host.uri, "list", "--name", check=False).split()
        if running:
            raise LabError(f"{host.name} still runs {', '.join(running)}: move or delete them first")
    _refuse_removing_orphans(host)
    hosts.stop_host(host)
    state.hosts = [h for h in state.hosts if h.name != host.name]
    state.save()
    write_inventory(state)
    print(json.dumps({"host": host.name, "changed": True}))


def cmd_host(args: argparse.Namespace) -> None:
    host = LabState.load(args.lab_dir).host(args.name)
    if args.host_command == "kill":
        killed = hosts.kill_host(host)
        print(json.dumps({"host": host.name, "killed_pids": killed, "changed": bool(killed)}))
        return
    if args.host_command == "crash":
        print(json.dumps(hosts.crash_host(host)))
        return
    if args.host_command in ("isolate", "reconnect"):
        print(json.dumps(hosts.isolate_host(host, signal.SIGSTOP if args.host_command == "isolate" else signal.SIGCONT)))
        return
    if args.host_command == "fill-pool":
        print(json.dumps(hosts.fill_pool(host, args.leave_mib)))
        return
    if args.host_command == "free-pool":
        print(json.dumps(hosts.free_pool(host)))
        return
    if args.host_command in ("sshd-stop", "sshd-cont"):
        sig = signal.SIGSTOP if args.host_command == "sshd-stop" else signal.SIGCONT
        print(json.dumps({"host": host.name, "sshd_pids": hosts.signal_sshd(host, sig), "changed": True}))
        return
    if hosts.host_is_up(host):
        print(json.dumps({"host": host.name, "uri": host.uri, "changed": False}))
        return
    hosts.kill_host(host)  # a libvirtd that no longer answers
    hosts.start_host(host, keep_running=True)
    print(json.dumps({"host": host.name, "uri": host.uri, "changed": True}))


def cmd_guest(args: argparse.Namespace) -> None:
    state = LabState.load(args.lab_dir)
    if args.guest_command == "create":
        if args.reuse and guests.find_guest(state, args.name):
            print(json.dumps(guests.start_existing_guest(state, args.name, timeout_s=args.timeout_s)))
            return
        spec = guests.GuestSpec(
            args.name,
            args.memory_mib,
            args.vcpus,
            args.workload,
            network=args.network,
            disk_mib=args.disk_mib,
            disk_pool=args.disk_pool,
            disk_format=args.disk_format or ("raw" if args.disk_pool == "nbd" else "qcow2"),
            disk_fill_mib=args.disk_fill_mib,
            cpu_model=args.cpu_model,
            anti_affinity_group=args.anti_affinity,
            pinned_reason=args.pinned,
            machine=args.machine,
        )
        print(json.dumps(guests.create_guest(state, args.host, spec, wait=not args.no_wait, timeout_s=args.timeout_s)))
    elif args.guest_command == "check-disk":
        report = guests.check_disk(state, args.name, timeout_s=args.timeout_s)
        print(json.dumps(report))
        if not report["intact"]:
            raise LabError(f"guest {args.name}: {report['disk_errors']} disk error(s): {report['error_lines'][:3]}")
    elif args.guest_command == "crash":
        print(json.dumps(guests.crash_guest(state, args.name)))
    elif args.guest_command == "check-image":
        report = guests.check_image(state, args.name)
        print(json.dumps(report))
        if not report["intact"]:
            raise LabError(f"guest {args.name}: {report['blocks_written']} block(s) written, bad: {report['bad_blocks']}")
    elif args.guest_command == "delete":
        print(json.dumps({"name": args.name, "deleted_from": guests.delete_guest(state, args.name)}))
    else:
        print(json.dumps(guests.list_guests(state), indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="strata-lab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lab-dir", type=Path, default=DEFAULT_LAB_DIR)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("deps", help="install Debian packages").set_defaults(func=cmd_deps)
    up = sub.add_parser("up", help="start the lab hosts")
    up.add_argument("--hosts", type=int, default=3, choices=range(2, 9), metavar="N")
    up.add_argument("--capacity-mib", type=int, default=3072, help="memory capacity declared per host")
    up.add_argument(
        "--domain-type", choices=("qemu", "kvm"), default="qemu", help="qemu = TCG (default; nested KVM fails here)"
    )
    up.add_argument(
        "--transport", choices=transports.TRANSPORTS, default="ssh",
        help="how the inventory's URIs reach the hosts (default ssh; every host offers all three)",
    )
    up.add_argument(
        "--stack", action="append", metavar="HOST=STACK",
        help="run HOST (or all) on another libvirt/QEMU stack (%s); a host not named keeps the stack it ran, "
        "at first stock, the machine's own"
        % ", ".join(stack.known_stacks()),
    )
    up.set_defaults(func=cmd_up)
    stack_parser = sub.add_parser("stack", help="newer libvirt/QEMU stacks").add_subparsers(dest="verb", required=True)
    build = stack_parser.add_parser("build", help="(re)build a stack's cached root")
    build.add_argument("name", choices=[n for n in stack.known_stacks() if n != stack.STOCK])
    build.set_defaults(func=cmd_stack)
    controller_parser = sub.add_parser(
        "controller", help="a Debian 13 controller (Python 3.13) from the trixie root"
    ).add_subparsers(dest="verb", required=True)
    run = controller_parser.add_parser(
        "run", help="run a command in it (no standard input); exits with the command's status"
    )
    run.add_argument("--cwd", type=Path, default=Path.cwd(),
                     help="folder to run in: the checkout, the lab's or the cache's (default: this one)")
    run.add_argument("--timeout-s", type=float, default=controller.RUN_TIMEOUT_S)
    run.add_argument("command", nargs="+", metavar="COMMAND", help="after --: the command and its arguments")
    run.set_defaults(func=cmd_controller_run)
    status = sub.add_parser("status", help="show hosts and guests")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)
    down = sub.add_parser("down", help="stop every lab process")
    down.add_argument("--purge", action="store_true", help="also forget guest definitions and consoles")
    down.set_defaults(func=cmd_down)
    guest = sub.add_parser("guest", help="create, delete or list guests")
    guest_sub = guest.add_subparsers(dest="guest_command", required=True)
    create = guest_sub.add_parser("create")
    create.add_argument("name")
    create.add_argument("--host", default="hv1")
    create.add_argument("--memory-mib", type=int, default=256)
    create.add_argument("--vcpus", type=int, default=1)
    create.add_argument(
        "--workload", default="idle",
        help="idle | stale:N | hot:TOTAL:HOT:RATE[:fresh] | disk:MIB:RATE, comma-joined"
    )
    create.add_argument("--network", help="attach a virtio NIC on this libvirt network (every host has 'labnet')")
    create.add_argument("--disk-mib", type=int, default=0, help="attach a virtio disk (vda) of this size (0 = no disk)")
    create.add_argument(
        "--disk-pool", choices=guests.DISK_POOLS, default="local",
        help="local: this host's own pool; small: this host's 192 MiB tmpfs pool; shared: a folder every host sees "
        "(libvirt cannot tell it is shared); nbd: the lab's NBD server, a network disk (raw)",
    )
    create.add_argument("--disk-format", choices=guests.DISK_FORMATS, help="default: qcow2, raw on nbd")
    create.add_argument("--disk-fill-mib", type=int, default=0, help="write this much data into the disk before boot")
    create.add_argument("--cpu-model", default="qemu64", help="guest CPU model (TCG); the legacy host lacks Westmere")
    create.add_argument(
        "--anti-affinity", metavar="GROUP", help="anti-affinity group, in the domain metadata strata.migration reads"
    )
    create.add_argument(
        "--pinned", metavar="REASON", help="pin the guest to its host (the reason), in the domain metadata"
    )
    create.add_argument(
        "--machine", default="pc", help="machine type (default pc, the host QEMU's newest i440fx; e.g. pc-i440fx-7.2)"
    )
    create.add_argument("--no-wait", action="store_true", help="do not wait for the guest's userspace")
    create.add_argument("--timeout-s", type=float, default=90)
    create.add_argument(
        "--reuse", action="store_true", help="keep a guest of this name that exists; start it if it is shut off"
    )
    check_disk = guest_sub.add_parser(
        "check-disk", help="wait for the guest's disk workload to read back its disk; exit 1 on a lost or torn block"
    )
    check_disk.add_argument("name")
    check_disk.add_argument("--timeout-s", type=float, default=30)
    guest_sub.add_parser("crash", help="SIGKILL the guest's QEMU, as a crash would").add_argument("name")
    guest_sub.add_parser(
        "check-image", help="read a stopped guest's shared disk image; exit 1 on a torn or corrupted block"
    ).add_argument("name")
    delete = guest_sub.add_parser("delete")
    delete.add_argument("name")
    guest_sub.add_parser("list")
    guest.set_defaults(func=cmd_guest)
    network = sub.add_parser("network", help="create or delete an isolated network on one host")
    network_sub = network.add_subparsers(dest="network_command", required=True)
    for verb in ("create", "delete"):
        network_verb = network_sub.add_parser(verb)
        network_verb.add_argument("name")
        network_verb.add_argument("--host", required=True)
    network.set_defaults(func=cmd_network)
    host = sub.add_parser("host", help="kill or restart one host's libvirtd (failure tests)")
    host_sub = host.add_subparsers(dest="host_command", required=True)
    add = host_sub.add_parser("add", help="add one host (hv1..hv8) to a running lab")
    add.add_argument("name")
    add.add_argument("--stack", default=stack.STOCK, choices=stack.known_stacks())
    add.set_defaults(func=cmd_host_add)
    set_stack = host_sub.add_parser(
        "set-stack", help="restart an empty host on another stack, as an upgrade would (its definitions stay)"
    )
    set_stack.add_argument("name")
    set_stack.add_argument("stack", choices=stack.known_stacks())
    set_stack.set_defaults(func=cmd_host_set_stack)
    remove = host_sub.add_parser("remove", help="stop one host and take it out of the lab")
    remove.add_argument("name")
    remove.set_defaults(func=cmd_host_remove)
    host_sub.add_parser("kill", help="SIGKILL the host's libvirtd; its guests' QEMU processes keep running").add_argument(
        "name"
    )
    host_sub.add_parser(
        "crash", help="SIGKILL the host's libvirtd, sshd and guests' QEMU at once, as a power loss"
    ).add_argument("name")
    host_sub.add_parser(
        "isolate", help="SIGSTOP the host's libvirtd, sshd and virtlockd: cut off, its guests and leases stay"
    ).add_argument("name")
    host_sub.add_parser("reconnect", help="continue an isolated host").add_argument("name")
    host_sub.add_parser(
        "start", help="start a killed or crashed host again; it reconnects to its running guests (no-op when it is up)"
    ).add_argument("name")
    host_sub.add_parser("sshd-stop", help="SIGSTOP the host's sshd: new ssh connections to it hang").add_argument(
        "name"
    )
    host_sub.add_parser("sshd-cont", help="continue a stopped sshd").add_argument("name")
    fill = host_sub.add_parser("fill-pool", help=f"fill the host's pool '{hosts.SMALL_POOL}' (a tmpfs) with a file")
    fill.add_argument("name")
    fill.add_argument("--leave-mib", type=int, default=0, help="MiB to leave free")
    host_sub.add_parser("free-pool", help=f"remove that file from pool '{hosts.SMALL_POOL}'").add_argument("name")
    host.set_defaults(func=cmd_host)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # Commands that run another one (controller run) return its exit status; the rest return None.
        status = args.func(args)
    except LabError as exc:
        print(f"strata-lab: {exc}", file=sys.stderr)
        return 1
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
