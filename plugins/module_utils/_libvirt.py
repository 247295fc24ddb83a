# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Connections to libvirt: URI checks, redaction, bounded connect, error text.

This module is internal to the strata.migration collection. It is not a public
API and may change without notice.
"""

from __future__ import annotations

import threading
import traceback
import typing as t
from urllib.parse import unquote, urlsplit

try:
    import libvirt
except ImportError:
    libvirt = None
    HAS_LIBVIRT = False
    LIBVIRT_IMPORT_ERROR: t.Optional[str] = traceback.format_exc()
else:
    HAS_LIBVIRT = True
    LIBVIRT_IMPORT_ERROR = None


def _ignore_libvirt_error(_context: t.Any, _error: t.Any) -> None:
    """Errors reach the caller as exceptions; libvirt's default handler would also print them to stderr."""


if HAS_LIBVIRT:
    LibvirtError = libvirt.libvirtError
    libvirt.registerErrorHandler(_ignore_libvirt_error, None)
else:
    class LibvirtError(Exception):  # type: ignore[no-redef]
        """Stands in for libvirt.libvirtError so `except LibvirtError` works without libvirt."""

        def get_error_code(self) -> t.Optional[int]:
            return None

        def get_error_message(self) -> str:
            return str(self)


# libvirt error codes (virErrorNumber); numeric values are libvirt's stable ABI,
# spelled out so pure code and tests do not need the binding.
ERR_NO_SUPPORT = 3
ERR_NO_DOMAIN = 42
ERR_OPERATION_INVALID = 55
ERR_OPERATION_UNSUPPORTED = 84

# Keepalive: a host that stops answering on an open connection is declared dead after
# about interval * (count + 1) s, so no call (a migration's job statistics, say) hangs forever.
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT = 3

DRIVERS = ("qemu", "test")
TRANSPORTS = ("ssh", "tcp", "tls", "unix", "libssh", "libssh2")
QEMU_PATHS = ("/system", "/session")
URI_FORM = "DRIVER[+TRANSPORT]://[USER@][HOST[:PORT]]/PATH"
URI_EXAMPLES = "qemu:///system, qemu+ssh://root@hv1.example.com/system, qemu+tls://hv1.example.com/system"


class StrataError(Exception):
    """An error this collection reports to the user.

    `details` holds plain data (URI without credentials, domain, host, libvirt
    error code) that the module base adds to the failure result.
    """

    def __init__(self, msg: str, **details: t.Any) -> None:
        super().__init__(msg)
        self.details = details


class LibvirtUriError(StrataError, ValueError):
    """The URI is not one this collection can use."""


class LibvirtConnectError(StrataError):
    """Opening the connection failed or did not finish in time."""


# URI parameters that name a private key or certificate files: their values are never shown.
SECRET_URI_PARAMETERS = ("keyfile", "pkipath", "known_hosts")
HIDDEN = "********"


def _split_query(query: str) -> t.List[t.Tuple[str, str, str]]:
    """(name, '=', value) for each `&`-separated parameter, as written."""
    return [part.partition("=") for part in query.split("&")] if query else []


def redact_uri(uri: str) -> str:
    """Return `uri` without the password in its userinfo and without the values of key and certificate
    parameters (SECRET_URI_PARAMETERS); everything else is kept."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    rest, hash_sign, fragment = rest.partition("#")
    rest, question, query = rest.partition("?")
    slash = rest.find("/")
    netloc, path = (rest, "") if slash == -1 else (rest[:slash], rest[slash:])
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = "%s@%s" % (userinfo.split(":", 1)[0], hostport)
    parameters = [
        (name, equals, HIDDEN if equals and unquote(name) in SECRET_URI_PARAMETERS else value)
        for name, equals, value in _split_query(query)
    ]
    query = "&".join(name + equals + value for name, equals, value in parameters)
    return "%s://%s%s%s%s%s%s" % (scheme, netloc, path, question, query, hash_sign, fragment)


def uri_secrets(uri: str) -> t.List[str]:
    """Return the secrets in `uri` for no_log: the userinfo password and the values of key and certificate
    parameters, each raw and decoded."""
    try:
        parts = urlsplit(uri)
        password = parts.password
    except ValueError:
        return []
    found = [password] if password else []
    found += [value for name, equals, value in _split_query(parts.query)
              if equals and value and unquote(name) in SECRET_URI_PARAMETERS]
    secrets: t.List[str] = []
    for value in found:
        for form in (value, unquote(value)):
            if form not in secrets:
                secrets.append(form)
    return secrets


def _uri_error(uri: str, problem: str) -> LibvirtUriError:
    shown = redact_uri(uri)
    return LibvirtUriError(
        "invalid libvirt URI '%s': %s; expected %s, for example %s"
        % (shown, problem, URI_FORM, URI_EXAMPLES),
        uri=shown,
    )


def validate_uri(uri: t.Any) -> str:
    """Check that `uri` names a qemu (or test) libvirt driver; return it unchanged.

    Raises LibvirtUriError naming what was expected.
    """
    if not isinstance(uri, str) or not uri:
        raise _uri_error(str(uri or ""), "it is empty")
    if any(char.isspace() for char in uri):
        raise _uri_error(uri, "it contains whitespace")
    if "://" not in uri:
        raise _uri_error(uri, "there is no '://' after the driver name")
    scheme = uri.partition("://")[0]
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise _uri_error(uri, "the host part cannot be parsed (%s)" % exc) from exc
    if parts.scheme != scheme.lower():
        raise _uri_error(uri, "'%s' is not a valid driver name" % scheme)
    driver, plus, transport = parts.scheme.partition("+")
    if driver not in DRIVERS:
        raise _uri_error(
            uri, "driver '%s' is not supported, use qemu (or test for libvirt's test driver)" % driver
        )
    if plus and transport not in TRANSPORTS:
        raise _uri_error(
            uri, "transport '%s' is not one of %s" % (transport, ", ".join(TRANSPORTS))
        )
    if port is not None and port == 0:
        raise _uri_error(uri, "port 0 is not a usable port")
    if parts.fragment:
        raise _uri_error(uri, "a '#' fragment is not allowed")
    if driver == "qemu" and parts.path not in QEMU_PATHS:
        raise _uri_error(
            uri, "path '%s' is not valid for qemu, use /system or /session" % parts.path
        )
    if driver == "test" and (not parts.path.startswith("/") or parts.path == "/"):
        raise _uri_error(
            uri, "path '%s' is not valid for test, use /default or the absolute path of a test driver XML file" % parts.path
        )
    return uri


_ERROR_LEVEL_NAMES = frozenset(("VIR_ERR_NONE", "VIR_ERR_WARNING", "VIR_ERR_ERROR"))


def _error_code_name(code: int) -> t.Optional[str]:
    if not HAS_LIBVIRT:
        return None
    for name in dir(libvirt):
        # VIR_ERR_NONE/WARNING/ERROR are error levels that share values with codes.
        if name.startswith("VIR_ERR_") and name not in _ERROR_LEVEL_NAMES and getattr(libvirt, name) == code:
            return name
    return None


def libvirt_error_code(exc: BaseException) -> t.Optional[int]:
    """Return the libvirt error code of `exc`, or None when it carries none."""
    getter = getattr(exc, "get_error_code", None)
    if getter is None:
        return None
    code = getter()
    return code if isinstance(code, int) else None


def is_unsupported(exc: BaseException) -> bool:
    """True when libvirt says the driver or hypervisor does not offer the call."""
    return libvirt_error_code(exc) in (ERR_NO_SUPPORT, ERR_OPERATION_UNSUPPORTED)


def find_domain(conn: t.Any, name: str) -> t.Optional[t.Any]:
    """The domain called `name` on this connection, or None when the host has no such domain."""
    return _found_or_none(conn.lookupByName, name)


def find_domain_by_uuid(conn: t.Any, uuid: str) -> t.Optional[t.Any]:
    """The domain with this UUID on this connection, or None when the host has no such domain."""
    return _found_or_none(conn.lookupByUUIDString, uuid)


def _found_or_none(lookup: t.Callable[[str], t.Any], key: str) -> t.Optional[t.Any]:
    try:
        return lookup(key)
    except LibvirtError as exc:
        if libvirt_error_code(exc) != ERR_NO_DOMAIN:
            raise
        return None


def describe_libvirt_error(exc: BaseException) -> str:
    """Return libvirt's message for `exc` followed by the symbolic error code."""
    getter = getattr(exc, "get_error_message", None)
    message = (getter() if getter is not None else None) or str(exc) or type(exc).__name__
    code = libvirt_error_code(exc)
    if code is None:
        return message
    name = _error_code_name(code)
    if name:
        return "%s (libvirt error %s, code %d)" % (message, name, code)
    return "%s (libvirt error code %d)" % (message, code)


def _credentials_callback(username: t.Optional[str], password: str) -> t.Callable[..., int]:
    def answer(credentials: t.List[t.List[t.Any]], opaque: t.Any) -> int:
        for credential in credentials:
            if credential[0] == libvirt.VIR_CRED_AUTHNAME:
                credential[4] = username or credential[3]
            elif credential[0] == libvirt.VIR_CRED_PASSPHRASE:
                credential[4] = password
            else:
                return -1
        return 0

    return answer


_event_loop_lock = threading.Lock()
_event_loop_started = False


def _run_event_loop() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()


def ensure_event_loop() -> None:
    """Start libvirt's default event loop once per process (keepalive needs one).

    It must be registered before the first connection opens.
    """
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()
        threading.Thread(target=_run_event_loop, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


def _enable_keepalive(conn: t.Any) -> None:
    try:
        conn.setKeepAlive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)
    except LibvirtError as exc:
        # Local drivers (test:///) have no keepalive; they cannot hang on a network either.
        if not is_unsupported(exc):
            raise


def _open_libvirt(uri: str) -> t.Any:
    """Open `uri` with libvirt, with keepalive; a userinfo password is answered through the auth callback.

    libvirt does not read passwords from URIs, so it gets the URI without the
    password and the password is handed to SASL or libssh(2) when they ask.
    """
    ensure_event_loop()
    parts = urlsplit(uri)
    if parts.password is None:
        conn = libvirt.open(uri)
    else:
        username = unquote(parts.username) if parts.username else None
        auth = [
            [libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_PASSPHRASE],
            _credentials_callback(username, unquote(parts.password)),
            None,
        ]
        conn = libvirt.openAuth(redact_uri(uri), auth, 0)
    try:
        _enable_keepalive(conn)
    except LibvirtError:
        _close_quietly(conn)
        raise
    return conn


def _close_quietly(conn: t.Any) -> None:
    try:
        conn.close()
    except LibvirtError:
        pass


def open_connection(
    uri: str,
    connect_timeout_s: float,
    opener: t.Optional[t.Callable[[str], t.Any]] = None,
) -> t.Any:
    """Open a libvirt connection, giving up after `connect_timeout_s` seconds.

    libvirt has no connect timeout and a TCP or SSH connect to an unresponsive
    host can block for minutes, so the open runs in a daemon thread. A
    connection that completes after we gave up is closed by that thread.
    `opener` (default: libvirt.open) is injectable for tests.
    """
    if connect_timeout_s <= 0:
        raise ValueError("connect_timeout_s must be positive, got %r" % (connect_timeout_s,))
    shown = redact_uri(uri)
    open_uri = opener or _open_libvirt
    lock = threading.Lock()
    outcome: t.Dict[str, t.Any] = {}

    def attempt() -> None:
        try:
            conn = open_uri(uri)
        except Exception as exc:  # handed to the caller's thread and re-raised there
            with lock:
                outcome["error"] = exc
            return
        with lock:
            if not outcome.get("abandoned"):
                outcome["conn"] = conn
                return
        _close_quietly(conn)

    worker = threading.Thread(target=attempt, name="libvirt-connect", daemon=True)
    worker.start()
    worker.join(connect_timeout_s)
    with lock:
        if "conn" in outcome:
            return outcome["conn"]
        error = outcome.get("error")
        if error is None:
            outcome["abandoned"] = True
    if error is None:
        raise LibvirtConnectError(
            "libvirt at %s did not answer within %s s (connect_timeout_s); check that the host "
            "is reachable and libvirtd is listening, or raise connect_timeout_s" % (shown, connect_timeout_s),
            uri=shown,
        )
    if isinstance(error, LibvirtError):
        raise LibvirtConnectError(
            "cannot connect to libvirt at %s: %s" % (shown, describe_libvirt_error(error)),
            uri=shown,
            libvirt_error_code=libvirt_error_code(error),
        ) from error
    raise error


def connect_all(clients: t.Sequence["LibvirtClient"]) -> None:
    """Open the connections of several clients at once, each bounded by its own connect_timeout_s.

    The first client's error wins, as if they had been opened one after the other.
    """
    for client in clients:
        client.connect_in_background()
    for client in clients:
        client.conn  # pylint: disable=pointless-statement


class LibvirtClient:
    """A libvirt connection opened on first use, never in the constructor."""

    def __init__(
        self,
        uri: str,
        connect_timeout_s: float,
        opener: t.Optional[t.Callable[[str], t.Any]] = None,
    ) -> None:
        self.uri = uri
        self.display_uri = redact_uri(uri)
        self.connect_timeout_s = connect_timeout_s
        self._opener = opener
        self._conn: t.Any = None
        self._connecting: t.Optional[threading.Thread] = None
        self._connect_error: t.Optional[BaseException] = None

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def another(self) -> "LibvirtClient":
        """A second client for the same host and settings, with a connection of its own."""
        return LibvirtClient(self.uri, self.connect_timeout_s, self._opener)

    def connect_in_background(self) -> None:
        """Start connecting now, in a thread; the first use of `conn` waits for it (and raises its error).

        Over ssh a connection costs about 0.3 s: opened beside other work, it costs none of it.
        """
        if self._conn is not None or self._connecting is not None:
            return

        def connect() -> None:
            try:
                self._conn = open_connection(self.uri, self.connect_timeout_s, opener=self._opener)
            except Exception as exc:  # re-raised by the first use of conn
                self._connect_error = exc

        self._connecting = threading.Thread(target=connect, name="libvirt-connect-early", daemon=True)
        self._connecting.start()

    def _wait_for_background_connect(self) -> None:
        thread, self._connecting = self._connecting, None
        if thread is None:
            return
        # open_connection gives up after connect_timeout_s; the extra second covers the thread's own start.
        thread.join(self.connect_timeout_s + 1.0)
        error, self._connect_error = self._connect_error, None
        if error is not None:
            raise error

    @property
    def conn(self) -> t.Any:
        """The open virConnect; the first access connects (bounded by connect_timeout_s)."""
        self._wait_for_background_connect()
        if self._conn is None:
            self._conn = open_connection(self.uri, self.connect_timeout_s, opener=self._opener)
        return self._conn

    def close(self) -> None:
        try:
            self._wait_for_background_connect()
        except Exception:  # a connection that never opened has nothing to close
            pass
        conn, self._conn = self._conn, None
        if conn is not None:
            _close_quietly(conn)

    def __enter__(self) -> "LibvirtClient":
        return self

    def __exit__(self, *exc_info: t.Any) -> None:
        self.close()
