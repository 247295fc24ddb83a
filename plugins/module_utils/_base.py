# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The one AnsibleModule wrapper shared by every strata.migration module.

This module is internal to the strata.migration collection. It is not a public
API and may change without notice.
"""

from __future__ import annotations

import copy
import traceback
import typing as t

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.strata.migration.plugins.module_utils._cluster import (
    CLUSTER_HOSTS_ARGSPEC,
    ClusterHost,
    cluster_hosts,
    host_uri_secrets,
)
from ansible_collections.strata.migration.plugins.module_utils._libvirt import (
    HAS_LIBVIRT,
    LIBVIRT_IMPORT_ERROR,
    LibvirtClient,
    LibvirtError,
    LibvirtUriError,
    StrataError,
    describe_libvirt_error,
    libvirt_error_code,
    redact_uri,
    uri_secrets,
    validate_uri,
)

# Documented by the strata.migration.connection doc fragment.
STRATA_CONNECTION_ARGSPEC: t.Dict[str, t.Dict[str, t.Any]] = {
    "uri": {"type": "str", "default": "qemu:///system"},
    "connect_timeout_s": {"type": "int", "default": 10},
}


class StrataModule(AnsibleModule):
    """AnsibleModule with the connection options, checks and a lazy libvirt client.

    After construction the libvirt binding is present, `uri` is valid, its
    password is in no_log_values and `connect_timeout_s` is at least 1. The
    connection opens on the first use of `client.conn`.
    """

    def __init__(self, argument_spec: t.Optional[t.Dict[str, t.Any]] = None, **kwargs: t.Any) -> None:
        spec = copy.deepcopy(STRATA_CONNECTION_ARGSPEC)
        spec.update(argument_spec or {})
        # Set before AnsibleModule.__init__, whose argument checks may call fail_json.
        self._client: t.Optional[LibvirtClient] = None
        super().__init__(argument_spec=spec, **kwargs)
        if not HAS_LIBVIRT:
            self.fail_json(msg=missing_required_lib("libvirt-python"), exception=LIBVIRT_IMPORT_ERROR)
        if self.params["connect_timeout_s"] < 1:
            self.fail_json(
                msg="connect_timeout_s must be at least 1 (seconds), got %d" % self.params["connect_timeout_s"],
                option="connect_timeout_s",
            )
        try:
            validate_uri(self.params["uri"])
        except LibvirtUriError as exc:
            self.fail_from(exc)

    def _load_params(self) -> None:
        # Mask URI passwords as soon as the parameters exist, before any check can fail and
        # echo them: every option named uri or *_uri (the source, a destination) counts.
        super()._load_params()
        for option, value in self.params.items():
            if (option == "uri" or option.endswith("_uri")) and isinstance(value, str):
                self.no_log_values.update(uri_secrets(value))

    @property
    def display_uri(self) -> str:
        """The uri option without credentials, for messages."""
        return redact_uri(self.params["uri"])

    @property
    def client(self) -> LibvirtClient:
        """The libvirt client for `uri`; it connects on first use of `client.conn`."""
        if self._client is None:
            self._client = LibvirtClient(self.params["uri"], self.params["connect_timeout_s"])
        return self._client

    def fail_from(self, exc: BaseException, **result: t.Any) -> t.NoReturn:
        """Fail the module with the message and details of a StrataError or libvirt error.

        `result` holds defaults for the failure result; the error's own details win.

        Any other exception is a bug and is re-raised rather than disguised.
        """
        if isinstance(exc, StrataError):
            details = dict(exc.details)
            msg = str(exc)
        elif isinstance(exc, LibvirtError):
            details = {"uri": self.display_uri, "libvirt_error_code": libvirt_error_code(exc)}
            msg = "libvirt at %s: %s" % (self.display_uri, describe_libvirt_error(exc))
        else:
            raise exc
        details = dict(result, **details)
        trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.fail_json(msg=msg, exception=trace, **details)

    def _close_client(self) -> None:
        if self._client is not None:
            self._client.close()

    # AnsibleModule's exit_json and fail_json end the process but are not annotated as never returning.
    def exit_json(self, **kwargs: t.Any) -> t.NoReturn:  # type: ignore[misc]
        self._close_client()
        super().exit_json(**kwargs)

    def fail_json(self, msg: str, **kwargs: t.Any) -> t.NoReturn:  # type: ignore[misc]
        self._close_client()
        super().fail_json(msg, **kwargs)


class StrataClusterModule(AnsibleModule):
    """AnsibleModule for modules that read every host of a cluster at once (the strata.migration.cluster_hosts
    doc fragment): the options of the fragment, the hosts' passwords in no_log_values, the binding present."""

    def __init__(self, argument_spec: t.Optional[t.Dict[str, t.Any]] = None, **kwargs: t.Any) -> None:
        spec = copy.deepcopy(CLUSTER_HOSTS_ARGSPEC)
        spec.update(argument_spec or {})
        super().__init__(argument_spec=spec, **kwargs)
        if not HAS_LIBVIRT:
            self.fail_json(msg=missing_required_lib("libvirt-python"), exception=LIBVIRT_IMPORT_ERROR)

    def _load_params(self) -> None:
        # The hosts' URIs are nested, out of reach of AnsibleModule's no_log handling: mask their
        # passwords before any argument check can fail and echo them.
        super()._load_params()
        self.no_log_values.update(host_uri_secrets(self.params.get("hosts")))

    def checked_hosts(self) -> t.List[ClusterHost]:
        """The hosts option, checked (StrataError naming the entry at fault)."""
        return cluster_hosts(self.params["hosts"], self.params["connect_timeout_s"])
