# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Parse a JUnit XML report and print its suite counts and test cases as JSON.

Usage: python junit_summary.py REPORT.xml. Fails (with Python's parse error) when the file is not XML.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET


def summary(path: str) -> dict:
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        raise SystemExit("%s has no testsuite element" % path)
    cases = []
    for case in suite.iter("testcase"):
        failure = case.find("failure")
        skipped = case.find("skipped")
        cases.append({
            "name": case.get("name"),
            "classname": case.get("classname"),
            "failure": None if failure is None else failure.get("message", ""),
            "skipped": None if skipped is None else skipped.get("message", ""),
        })
    return {
        "name": suite.get("name"),
        "tests": int(suite.get("tests", "0")),
        "failures": int(suite.get("failures", "0")),
        "skipped": int(suite.get("skipped", "0")),
        "testcases": cases,
    }


if __name__ == "__main__":
    print(json.dumps(summary(sys.argv[1])))
