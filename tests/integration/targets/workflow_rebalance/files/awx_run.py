# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Run a playbook through ansible-runner, as an AWX job does, and print the job's outcome as JSON.

Prints one JSON object: the runner's status and rc, the data the play handed on with set_stats
(event_data.artifact_data of the playbook_on_stats event, which AWX passes to the next job of a
workflow), the per-host stats, and the end of the job's output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import ansible_runner


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--private-data-dir", required=True)
    parser.add_argument("--playbook", required=True)
    parser.add_argument("--inventory", required=True)
    parser.add_argument("--extravars", required=True, help="a JSON file of extra variables")
    parser.add_argument("--check", action="store_true", help="run in check mode")
    args = parser.parse_args()

    # AWX prepares the job's directory; ansible-runner fills it (env/, inventory/, artifacts/).
    os.makedirs(args.private_data_dir, mode=0o700, exist_ok=True)
    with open(args.extravars, encoding="utf-8") as extravars_file:
        extravars = json.load(extravars_file)
    envvars = {
        "ANSIBLE_COLLECTIONS_PATH": os.environ["ANSIBLE_COLLECTIONS_PATH"],
        # The ansible-playbook of this Python, as an execution environment has its own.
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
        "ANSIBLE_NOCOLOR": "1",
    }
    runner = ansible_runner.run(
        private_data_dir=args.private_data_dir,
        playbook=args.playbook,
        inventory=args.inventory,
        extravars=extravars,
        envvars=envvars,
        cmdline="--check" if args.check else None,
        quiet=True,
    )
    artifact_data = None
    for event in runner.events:
        if event.get("event") == "playbook_on_stats":
            artifact_data = event.get("event_data", {}).get("artifact_data")
    output = runner.stdout.read() if runner.stdout else ""
    print(json.dumps({
        "status": runner.status,
        "rc": runner.rc,
        "artifact_data": artifact_data,
        "stats": runner.stats,
        "output_tail": output.splitlines()[-40:],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
