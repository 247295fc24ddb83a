# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:

    # The hosts of a cluster, read at once (strata.migration.cluster_info, strata.migration.definitions_backup).
    DOCUMENTATION = r"""
options:
  hosts:
    description:
      - Every host of the cluster.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description:
          - Host name, normally the inventory name; the result names hosts by it. Names must be unique.
        type: str
        required: true
      uri:
        description:
          - libvirt connection URI of the host, in the form C(DRIVER[+TRANSPORT]://[USER@][HOST[:PORT]]/PATH), as
            the C(uri) option of the other modules of this collection. Each host needs its own URI.
          - A password in the URI is never shown in output.
        type: str
        required: true
      memory_capacity_mib:
        description:
          - Memory the host offers to VMs, in MiB. Defaults to the host's memory as
            M(strata.migration.host_info) reports it (RV(strata.migration.cluster_info#module:hosts[].memory_total_mib)).
          - Set it where hosts share memory or the host's own memory is reserved for other uses.
        type: int
      reserve_mib:
        description:
          - Memory in MiB kept free for the host itself; the planner never places VMs into it.
        type: int
        default: 0
  connect_timeout_s:
    description:
      - Seconds to wait for the connection to each host to open. The hosts are connected to at the same time, so
        this bounds the wait for all of them.
      - Must be at least V(1).
    type: int
    default: 10
"""
