# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""strata.migration.libvirt_events: an ansible-rulebook event source that watches libvirt hypervisors.

It holds a read-only connection to each host with libvirt keepalive on, and emits:

  {"strata": {"type": "host_down", "host": NAME, "uri": URI, "reason": WHY, "lost_at": EPOCH_S, "detected_at": EPOCH_S}}
      the host's connection closed (keepalive timeout, libvirtd gone) or never opened, and no new
      connection opened within down_after_s;
  {"strata": {"type": "host_up", "host": NAME, "uri": URI}}
      a host reported down answers again;
  {"strata": {"type": "domain_crashed", "host": NAME, "uri": URI, "vm": VM, "uuid": UUID, "cause": CAUSE}}
      a VM stopped without anyone asking: its QEMU died or failed (cause "failed"), or the guest
      crashed or panicked (cause "crashed"). Shutdowns, destroys, migrations and saves are not events.

Arguments:
  hosts:                  list of {name, uri}, the hypervisors to watch (required). URIs must not hold
                          passwords: use ssh keys or TLS certificates.
  keepalive_interval_s:   seconds between libvirt keepalive probes (default 2)
  keepalive_count:        unanswered probes before the connection counts as lost (default 2)
  down_after_s:           seconds without a new connection before host_down (default 5)
  connect_timeout_s:      bound on each connection attempt (default 5)
  reconnect_interval_s:   seconds between connection attempts (default 1)

Example:
  sources:
    - strata.migration.libvirt_events:
        hosts:
          - {name: hv1, uri: "qemu+ssh://root@hv1.example.com/system"}
          - {name: hv2, uri: "qemu+ssh://root@hv2.example.com/system"}
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import typing as t
import urllib.parse

try:
    import libvirt
except ImportError:  # reported when the source starts
    libvirt = None

# libvirt's values, fixed by its ABI.
EVENT_ID_LIFECYCLE = 0  # VIR_DOMAIN_EVENT_ID_LIFECYCLE
EVENT_STOPPED = 5  # VIR_DOMAIN_EVENT_STOPPED
STOPPED_CRASHED = 2  # VIR_DOMAIN_EVENT_STOPPED_CRASHED
STOPPED_FAILED = 5  # VIR_DOMAIN_EVENT_STOPPED_FAILED
EVENT_CRASHED = 8  # VIR_DOMAIN_EVENT_CRASHED
CLOSE_REASONS = {0: "connection error", 1: "libvirtd closed the connection", 2: "keepalive timeout",
                 3: "closed by the client"}

DEFAULTS = {"keepalive_interval_s": 2, "keepalive_count": 2, "down_after_s": 5, "connect_timeout_s": 5,
            "reconnect_interval_s": 1}

_event_loop_started = threading.Lock()
_event_loop_running = False


def crash_cause(event: int, detail: int) -> t.Optional[str]:
    """'failed' or 'crashed' for a lifecycle event that means the VM stopped unasked; None otherwise."""
    if event == EVENT_STOPPED and detail == STOPPED_FAILED:
        return "failed"
    if (event == EVENT_STOPPED and detail == STOPPED_CRASHED) or event == EVENT_CRASHED:
        return "crashed"
    return None


def check_args(args: t.Mapping[str, t.Any]) -> t.Tuple[t.List[t.Dict[str, str]], t.Dict[str, float]]:
    """The hosts and the bounds, checked; ValueError naming the argument at fault."""
    hosts = args.get("hosts")
    if not isinstance(hosts, list) or not hosts:
        raise ValueError("strata.migration.libvirt_events: hosts must list the hypervisors, each {name, uri}")
    checked, names = [], set()
    for index, host in enumerate(hosts):
        if not isinstance(host, dict) or not host.get("name") or not host.get("uri"):
            raise ValueError("strata.migration.libvirt_events: hosts[%d] needs a name and a uri" % index)
        if host["name"] in names:
            raise ValueError("strata.migration.libvirt_events: host %s is listed twice" % host["name"])
        if urllib.parse.urlsplit(str(host["uri"])).password:
            raise ValueError("strata.migration.libvirt_events: hosts[%d].uri holds a password; use ssh keys or TLS "
                             "certificates" % index)
        names.add(host["name"])
        checked.append({"name": str(host["name"]), "uri": str(host["uri"])})
    bounds = {}
    for key, default in DEFAULTS.items():
        value = args.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError("strata.migration.libvirt_events: %s must be a number above 0, got %r" % (key, value))
        bounds[key] = value
    return checked, bounds


@dataclasses.dataclass
class HostWatch:
    """Whether one host is up, and the events its transitions give. Times are monotonic seconds."""

    name: str
    uri: str
    down_after_s: float
    state: str = "unknown"  # unknown (never connected), up, lost (confirming), down (reported)
    lost_since: t.Optional[float] = None
    lost_reason: str = ""

    def _event(self, kind: str, **extra: t.Any) -> t.Dict[str, t.Any]:
        return {"strata": dict({"type": kind, "host": self.name, "uri": self.uri}, **extra)}

    def connected(self) -> t.List[t.Dict[str, t.Any]]:
        was_down = self.state == "down"
        self.state, self.lost_since = "up", None
        return [self._event("host_up")] if was_down else []

    def closed(self, reason: str, now: float) -> t.List[t.Dict[str, t.Any]]:
        if self.state == "up":
            self.state, self.lost_since, self.lost_reason = "lost", now, reason
        return []

    def connect_failed(self, error: str, now: float, wall_now: float) -> t.List[t.Dict[str, t.Any]]:
        if self.state == "down":
            return []
        if self.lost_since is None:
            self.lost_since, self.lost_reason = now, "unreachable: %s" % error
        if self.state == "unknown":
            self.lost_reason = "unreachable: %s" % error
        if now - self.lost_since < self.down_after_s:
            return []
        self.state = "down"
        return [self._event("host_down", reason=self.lost_reason, lost_at=round(wall_now - (now - self.lost_since), 3),
                            detected_at=round(wall_now, 3))]


def _start_libvirt_event_loop() -> None:
    """libvirt delivers events and keepalives only while its event loop runs: one thread per process."""
    global _event_loop_running
    with _event_loop_started:
        if _event_loop_running:
            return
        libvirt.virEventRegisterDefaultImpl()
        # The errors reach the events; libvirt's default handler would also print each to stderr.
        libvirt.registerErrorHandler(lambda _context, _error: None, None)

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_running = True


async def _in_thread(loop: asyncio.AbstractEventLoop, function: t.Callable[..., t.Any], *args: t.Any) -> t.Any:
    """Run a blocking libvirt call in a daemon thread of its own, so a call that hangs holds no pool worker."""
    future = loop.create_future()

    def settle(error: t.Optional[BaseException], value: t.Any) -> None:
        if future.done():  # the caller gave up waiting
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def run() -> None:
        try:
            value = function(*args)
        except Exception as exc:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(settle, exc, None)
        else:
            loop.call_soon_threadsafe(settle, None, value)

    threading.Thread(target=run, daemon=True).start()
    return await future


async def _watch(queue: asyncio.Queue, host: t.Dict[str, str], bounds: t.Dict[str, float]) -> None:
    loop = asyncio.get_running_loop()
    watch = HostWatch(host["name"], host["uri"], bounds["down_after_s"])
    while True:
        try:
            conn = await asyncio.wait_for(_in_thread(loop, libvirt.openReadOnly, host["uri"]),
                                          bounds["connect_timeout_s"])
        except (asyncio.TimeoutError, libvirt.libvirtError) as exc:
            error = str(exc) or "no answer within %s s" % bounds["connect_timeout_s"]
            for event in watch.connect_failed(error, time.monotonic(), time.time()):
                await queue.put(event)
            await asyncio.sleep(bounds["reconnect_interval_s"])
            continue
        closed = asyncio.Event()
        close_reason: t.List[str] = []

        def on_close(_conn: t.Any, reason: int, _opaque: t.Any) -> None:
            def mark() -> None:
                close_reason.append(CLOSE_REASONS.get(reason, "closed (%d)" % reason))
                closed.set()
            loop.call_soon_threadsafe(mark)

        def on_lifecycle(_conn: t.Any, dom: t.Any, event: int, detail: int, _opaque: t.Any) -> None:
            cause = crash_cause(event, detail)
            if cause is not None:
                found = watch._event("domain_crashed", vm=dom.name(), uuid=dom.UUIDString(), cause=cause)
                loop.call_soon_threadsafe(queue.put_nowait, found)

        try:
            conn.registerCloseCallback(on_close, None)
            conn.setKeepAlive(int(bounds["keepalive_interval_s"]), int(bounds["keepalive_count"]))
            conn.domainEventRegisterAny(None, EVENT_ID_LIFECYCLE, on_lifecycle, None)
        except libvirt.libvirtError as exc:
            close_reason.append(str(exc))
            closed.set()
        else:
            for event in watch.connected():
                await queue.put(event)
        await closed.wait()
        watch.closed(close_reason[0] if close_reason else "closed", time.monotonic())
        # Closing a dead connection may block until its transport gives up: not on the loop.
        threading.Thread(target=_close_quietly, args=(conn,), daemon=True).start()


def _close_quietly(conn: t.Any) -> None:
    try:
        conn.close()
    except Exception:  # the connection is gone either way
        pass


async def main(queue: asyncio.Queue, args: t.Dict[str, t.Any]) -> None:
    if libvirt is None:
        raise RuntimeError("strata.migration.libvirt_events needs libvirt-python in the Python that runs "
                           "ansible-rulebook (pip install libvirt-python, or the decision environment's image)")
    hosts, bounds = check_args(args)
    _start_libvirt_event_loop()
    await asyncio.gather(*(_watch(queue, host, bounds) for host in hosts))


if __name__ == "__main__":
    # A look at the events of a lab: python libvirt_events.py URI [URI ...]
    import sys

    class _PrintQueue:
        async def put(self, event: t.Dict[str, t.Any]) -> None:
            print(event, flush=True)

        def put_nowait(self, event: t.Dict[str, t.Any]) -> None:
            print(event, flush=True)

    watched = [{"name": "host%d" % index, "uri": uri} for index, uri in enumerate(sys.argv[1:], 1)]
    asyncio.run(main(_PrintQueue(), {"hosts": watched}))
