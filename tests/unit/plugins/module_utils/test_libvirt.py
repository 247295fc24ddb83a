# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import threading
import time

import pytest

from ansible_collections.strata.migration.plugins.module_utils import _libvirt
from ansible_collections.strata.migration.plugins.module_utils._libvirt import (
    LibvirtClient,
    LibvirtConnectError,
    LibvirtUriError,
    connect_all,
    describe_libvirt_error,
    libvirt_error_code,
    open_connection,
    redact_uri,
    uri_secrets,
    validate_uri,
)
from ansible_collections.strata.migration.tests.unit.plugins.module_utils.fakes import FakeLibvirtError


class FakeConn:
    def __init__(self, close_error=None):
        self.closed = 0
        self._close_error = close_error

    def close(self):
        self.closed += 1
        if self._close_error is not None:
            raise self._close_error
        return 0


@pytest.mark.parametrize("uri", [
    "qemu:///system",
    "qemu:///session",
    "qemu://hv1.example.com/system",
    "qemu+ssh://root@hv1.example.com/system",
    "qemu+ssh://root@hv1.example.com:2222/system?keyfile=/root/.ssh/id_ed25519&no_tty=1",
    "qemu+tcp://127.0.0.2/system",
    "qemu+tcp://127.0.0.2:16509/system",
    "qemu+tcp://[::1]/system",
    "qemu+tls://hv1.example.com/system",
    "qemu+unix:///system?socket=/run/lab/h1/libvirt-sock",
    "qemu+libssh://root@hv1/system",
    "qemu+libssh2://root@hv1/system?known_hosts=/tmp/kh",
    "qemu+tcp://admin:secret@hv1/system",
    "test:///default",
    "test:///tmp/strata/node.xml",
    "test+tcp://127.0.0.1/default",
])
def test_validate_uri_accepts(uri):
    assert validate_uri(uri) == uri


@pytest.mark.parametrize("uri, problem", [
    ("", "it is empty"),
    (None, "it is empty"),
    ("bogus", "no '://'"),
    ("qemu:/system", "no '://'"),
    (" qemu:///system", "whitespace"),
    ("qemu:///system\n", "whitespace"),
    ("xen:///system", "driver 'xen' is not supported"),
    ("lxc:///", "driver 'lxc' is not supported"),
    ("qemu_x:///system", "'qemu_x' is not a valid driver name"),
    ("qemu+foo://hv1/system", "transport 'foo' is not one of ssh, tcp, tls, unix, libssh, libssh2"),
    ("qemu+://hv1/system", "transport '' is not one of"),
    ("qemu:///", "path '/' is not valid for qemu"),
    ("qemu:///bad", "path '/bad' is not valid for qemu"),
    ("qemu://hv1", "path '' is not valid for qemu"),
    ("qemu:///system/", "path '/system/' is not valid for qemu"),
    ("test:///", "path '/' is not valid for test"),
    ("test://hv1", "path '' is not valid for test"),
    ("qemu+tcp://hv1:port/system", "the host part cannot be parsed"),
    ("qemu+tcp://hv1:99999/system", "the host part cannot be parsed"),
    ("qemu+tcp://hv1:0/system", "port 0"),
    ("qemu:///system#here", "fragment"),
])
def test_validate_uri_rejects_with_reason_and_expected_form(uri, problem):
    with pytest.raises(LibvirtUriError) as raised:
        validate_uri(uri)
    message = str(raised.value)
    assert problem in message
    assert "expected DRIVER[+TRANSPORT]://[USER@][HOST[:PORT]]/PATH" in message
    assert "qemu:///system" in message


def test_uri_error_is_a_value_error_and_carries_the_redacted_uri():
    with pytest.raises(ValueError) as raised:
        validate_uri("qemu+bad://admin:hunter2@hv1/system")
    assert "hunter2" not in str(raised.value)
    assert raised.value.details == {"uri": "qemu+bad://admin@hv1/system"}


@pytest.mark.parametrize("uri, expected", [
    ("qemu:///system", "qemu:///system"),
    ("qemu+ssh://root@hv1/system", "qemu+ssh://root@hv1/system"),
    ("qemu+tcp://admin:secret@hv1/system", "qemu+tcp://admin@hv1/system"),
    ("qemu+tcp://admin:secret@hv1:16509/system?no_verify=1", "qemu+tcp://admin@hv1:16509/system?no_verify=1"),
    ("qemu+tcp://admin:p%40ss@hv1/system", "qemu+tcp://admin@hv1/system"),
    ("qemu+tcp://admin:p@ss@hv1/system", "qemu+tcp://admin@hv1/system"),
    ("qemu+tcp://admin:@hv1/system", "qemu+tcp://admin@hv1/system"),
    ("qemu+tcp://:secret@hv1/system", "qemu+tcp://@hv1/system"),
    ("qemu+tcp://hv1/system?user=a:b@c", "qemu+tcp://hv1/system?user=a:b@c"),
    ("qemu+ssh://root@hv1:2222/system?keyfile=/root/.ssh/hv_key&no_verify=1",
     "qemu+ssh://root@hv1:2222/system?keyfile=********&no_verify=1"),
    ("qemu+ssh://root@hv1/system?command=/opt/ssh&keyfile=%2Fk&known_hosts=/etc/kh",
     "qemu+ssh://root@hv1/system?command=/opt/ssh&keyfile=********&known_hosts=********"),
    ("qemu+tls://hv1/system?pkipath=/etc/pki/hv#frag", "qemu+tls://hv1/system?pkipath=********#frag"),
    ("qemu+tls://hv1/system?pkipath", "qemu+tls://hv1/system?pkipath"),
    ("bogus", "bogus"),
])
def test_redact_uri(uri, expected):
    assert redact_uri(uri) == expected


@pytest.mark.parametrize("uri, expected", [
    ("qemu:///system", []),
    ("qemu+ssh://root@hv1/system", []),
    ("qemu+tcp://admin:secret@hv1/system", ["secret"]),
    ("qemu+tcp://admin:p%40ss@hv1/system", ["p%40ss", "p@ss"]),
    ("qemu+tcp://admin:@hv1/system", []),
    ("qemu+ssh://u:pw@hv1/system?keyfile=%2Froot%2Fk&no_verify=1", ["pw", "%2Froot%2Fk", "/root/k"]),
    ("qemu+tls://hv1/system?pkipath=/etc/pki/hv&pkipath=/etc/pki/hv", ["/etc/pki/hv"]),
    ("qemu+libssh://hv1/system?known_hosts=/kh&keyfile=", ["/kh"]),
    ("bogus", []),
])
def test_uri_secrets(uri, expected):
    assert uri_secrets(uri) == expected


def test_describe_libvirt_error_names_the_code():
    text = describe_libvirt_error(FakeLibvirtError("Domain not found", 42))
    assert text.startswith("Domain not found (libvirt error ")
    assert "code 42" in text
    if _libvirt.HAS_LIBVIRT:
        assert "VIR_ERR_NO_DOMAIN" in text


def test_describe_libvirt_error_does_not_confuse_codes_with_error_levels():
    # VIR_ERR_ERROR (a level) equals 2, as does the code VIR_ERR_NO_MEMORY.
    text = describe_libvirt_error(FakeLibvirtError("out of memory", 2))
    assert "VIR_ERR_ERROR" not in text
    assert "code 2" in text


def test_describe_libvirt_error_without_code_or_binding():
    assert describe_libvirt_error(FakeLibvirtError("no code", None)) == "no code"
    assert describe_libvirt_error(RuntimeError("plain")) == "plain"
    assert describe_libvirt_error(RuntimeError()) == "RuntimeError"
    assert libvirt_error_code(RuntimeError("plain")) is None
    assert libvirt_error_code(FakeLibvirtError("x", 38)) == 38


def test_open_connection_returns_the_opened_connection():
    conn = FakeConn()
    seen = []

    def opener(uri):
        seen.append(uri)
        return conn

    assert open_connection("qemu+tcp://u:pw@h/system", 5, opener=opener) is conn
    assert seen == ["qemu+tcp://u:pw@h/system"]


def test_open_connection_maps_libvirt_errors_without_credentials():
    def opener(uri):
        raise FakeLibvirtError("unable to connect to server at 'h:16509': Connection refused", 38)

    with pytest.raises(LibvirtConnectError) as raised:
        open_connection("qemu+tcp://admin:hunter2@h/system", 5, opener=opener)
    message = str(raised.value)
    assert message.startswith("cannot connect to libvirt at qemu+tcp://admin@h/system: unable to connect")
    assert "Connection refused" in message and "code 38" in message
    assert "hunter2" not in message
    assert raised.value.details == {"uri": "qemu+tcp://admin@h/system", "libvirt_error_code": 38}
    assert isinstance(raised.value.__cause__, FakeLibvirtError)


def test_open_connection_reraises_unexpected_errors():
    def opener(uri):
        raise KeyError("bug")

    with pytest.raises(KeyError):
        open_connection("qemu:///system", 5, opener=opener)


def test_open_connection_times_out_and_closes_a_late_connection():
    release = threading.Event()
    late = FakeConn()
    done = threading.Event()

    def opener(uri):
        release.wait(10)
        done.set()
        return late

    started = time.monotonic()
    with pytest.raises(LibvirtConnectError) as raised:
        open_connection("qemu+tcp://admin:hunter2@127.0.0.98/system", 0.2, opener=opener)
    elapsed = time.monotonic() - started
    assert elapsed < 2
    message = str(raised.value)
    assert "qemu+tcp://admin@127.0.0.98/system did not answer within 0.2 s (connect_timeout_s)" in message
    assert "hunter2" not in message
    release.set()
    assert done.wait(5)
    deadline = time.monotonic() + 5
    while not late.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert late.closed == 1


@pytest.mark.parametrize("timeout", [0, -1])
def test_open_connection_rejects_non_positive_timeouts(timeout):
    with pytest.raises(ValueError):
        open_connection("qemu:///system", timeout, opener=lambda uri: FakeConn())


def test_client_connects_lazily_once_and_closes():
    conn = FakeConn()
    calls = []

    def opener(uri):
        calls.append(uri)
        return conn

    client = LibvirtClient("qemu+tcp://u:pw@h/system", 3, opener=opener)
    assert calls == [] and not client.connected
    assert client.display_uri == "qemu+tcp://u@h/system"
    assert client.conn is conn and client.conn is conn
    assert calls == ["qemu+tcp://u:pw@h/system"] and client.connected
    client.close()
    assert conn.closed == 1 and not client.connected
    client.close()
    assert conn.closed == 1


def test_client_context_manager_closes_and_tolerates_close_errors():
    conn = FakeConn(close_error=FakeLibvirtError("already closed", 1))
    with LibvirtClient("qemu:///system", 3, opener=lambda uri: conn) as client:
        assert client.conn is conn
    assert conn.closed == 1 and not client.connected


def test_client_never_opened_closes_quietly():
    with LibvirtClient("qemu:///system", 3, opener=lambda uri: pytest.fail("must not connect")):
        pass


def test_connect_all_opens_the_connections_at_once():
    # Each open waits until both have started: opened one after the other, the first would time out.
    both_started = threading.Barrier(2, timeout=5)

    def opener(uri):
        both_started.wait()
        return FakeConn()

    first, second = LibvirtClient("qemu:///a", 3, opener=opener), LibvirtClient("qemu:///b", 3, opener=opener)
    connect_all([first, second])
    assert first.connected and second.connected
    first.close()
    second.close()


def test_connect_all_raises_the_first_clients_error_and_leaves_the_other_closable():
    def opener(uri):
        if uri.endswith("down"):
            raise FakeLibvirtError("unable to connect to server", 38)
        return conn

    conn = FakeConn()
    down, up = LibvirtClient("qemu:///down", 3, opener=opener), LibvirtClient("qemu:///up", 3, opener=opener)
    with pytest.raises(LibvirtConnectError) as caught:
        connect_all([down, up])
    assert "qemu:///down" in str(caught.value)
    up.close()
    assert conn.closed == 1


def test_a_background_connection_is_used_once_and_its_error_raised_on_first_use():
    calls = []

    def opener(uri):
        calls.append(uri)
        raise FakeLibvirtError("no route to host", 38)

    client = LibvirtClient("qemu:///x", 3, opener=opener)
    client.connect_in_background()
    with pytest.raises(LibvirtConnectError):
        client.conn  # pylint: disable=pointless-statement
    assert calls == ["qemu:///x"]
    client.close()


def test_another_client_has_its_own_connection():
    opened = []
    client = LibvirtClient("qemu:///x", 3, opener=lambda uri: opened.append(FakeConn()) or opened[-1])
    twin = client.another()
    assert twin.uri == client.uri and twin.connect_timeout_s == 3
    assert client.conn is not twin.conn and len(opened) == 2


@pytest.mark.skipif(not _libvirt.HAS_LIBVIRT, reason="needs the libvirt binding")
class _KeepAliveConn:
    """A connection that records the keepalive it was given."""

    def __init__(self, uri=None, error=None):
        self.uri = uri
        self.error = error
        self.keepalive = None
        self.closed = False

    def setKeepAlive(self, interval, count):
        if self.error is not None:
            raise self.error
        self.keepalive = (interval, count)

    def close(self):
        self.closed = True


def test_password_goes_to_the_auth_callback_not_the_uri(monkeypatch):
    libvirt = _libvirt.libvirt
    seen = {}
    conn = _KeepAliveConn()

    def open_auth(uri, auth, flags):
        seen["uri"] = uri
        credentials = [
            [libvirt.VIR_CRED_AUTHNAME, "user", "", "default-user", None],
            [libvirt.VIR_CRED_PASSPHRASE, "password", "", None, None],
        ]
        assert auth[0] == [libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_PASSPHRASE]
        seen["answer"] = auth[1](credentials, auth[2])
        seen["credentials"] = [credential[4] for credential in credentials]
        seen["refused"] = auth[1]([[libvirt.VIR_CRED_EXTERNAL, "", "", None, None]], None)
        return conn

    monkeypatch.setattr(libvirt, "openAuth", open_auth)
    monkeypatch.setattr(libvirt, "open", lambda uri: pytest.fail("password URIs use openAuth"))
    assert _libvirt._open_libvirt("qemu+tcp://ad%20min:p%40ss@h/system") is conn
    assert conn.keepalive == (_libvirt.KEEPALIVE_INTERVAL_S, _libvirt.KEEPALIVE_COUNT)
    assert seen == {
        "uri": "qemu+tcp://ad%20min@h/system",
        "answer": 0,
        "credentials": ["ad min", "p@ss"],
        "refused": -1,
    }


@pytest.mark.skipif(not _libvirt.HAS_LIBVIRT, reason="needs the libvirt binding")
def test_uri_without_password_uses_plain_open(monkeypatch):
    libvirt = _libvirt.libvirt
    monkeypatch.setattr(libvirt, "open", _KeepAliveConn)
    monkeypatch.setattr(libvirt, "openAuth", lambda *args: pytest.fail("no password, no openAuth"))
    conn = _libvirt._open_libvirt("qemu+ssh://root@h/system")
    assert conn.uri == "qemu+ssh://root@h/system"
    assert conn.keepalive == (_libvirt.KEEPALIVE_INTERVAL_S, _libvirt.KEEPALIVE_COUNT)


def test_keepalive_unsupported_by_the_driver_is_fine(monkeypatch):
    libvirt = _libvirt.libvirt
    unsupported = FakeLibvirtError("keepalive not supported", _libvirt.ERR_NO_SUPPORT)
    monkeypatch.setattr(libvirt, "open", lambda uri: _KeepAliveConn(uri, error=unsupported))
    conn = _libvirt._open_libvirt("test:///default")
    assert conn.keepalive is None and not conn.closed


def test_keepalive_failure_closes_the_connection_and_raises(monkeypatch):
    libvirt = _libvirt.libvirt
    broken = FakeLibvirtError("connection reset", 38)
    opened = []

    def open_conn(uri):
        opened.append(_KeepAliveConn(uri, error=broken))
        return opened[-1]

    monkeypatch.setattr(libvirt, "open", open_conn)
    with pytest.raises(FakeLibvirtError):
        _libvirt._open_libvirt("qemu+tcp://h/system")
    assert opened[0].closed


@pytest.mark.skipif(not _libvirt.HAS_LIBVIRT, reason="needs the libvirt binding")
def test_real_test_driver_connection():
    with LibvirtClient("test:///default", 5) as client:
        assert client.conn.getHostname()
