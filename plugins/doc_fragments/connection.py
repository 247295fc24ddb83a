# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:

    DOCUMENTATION = r"""
options:
  uri:
    description:
      - libvirt connection URI of the hypervisor host, in the form C(DRIVER[+TRANSPORT]://[USER@][HOST[:PORT]]/PATH).
      - The driver must be V(qemu) (path C(/system) or C(/session)) or V(test) (path C(/default) or the absolute path
        of a test driver XML file). The transport, if given, is one of V(ssh), V(tcp), V(tls), V(unix), V(libssh) or V(libssh2).
      - Modules run on the controller (or the execution environment), so the connection must not need interactive
        input. For SSH transports use key authentication; the libvirt URI parameter C(no_tty=1) makes SSH fail instead
        of asking for a password.
      - A password in the URI (C(qemu+tcp://user:secret@host/system)) is never shown in output, and is handed to
        libvirt's SASL or libssh authentication rather than put in the URI libvirt sees.
    type: str
    default: qemu:///system
  connect_timeout_s:
    description:
      - Seconds to wait for the connection to the host to open. libvirt itself has no connect timeout, and a host
        that does not answer would otherwise block the task for minutes.
      - Must be at least V(1).
    type: int
    default: 10
requirements:
  - libvirt-python (the C(libvirt) Python binding) on the host that runs the module, usually the controller
notes:
  - Modules of this collection run where the task runs, normally the controller (C(delegate_to) V(localhost)), and
    reach each hypervisor through O(uri). The hypervisor only needs libvirtd.
"""
