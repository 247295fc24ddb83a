"""Count what `make test` ran: pytest's JUnit files, ansible-test's logs, the ecosystem, integration and benchmark lists.

Prints one line per stage and a last line `total: N passed, N failed`; exits 1 when anything
failed or a stage ran nothing.
"""
from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def junit_counts(junit: Path) -> tuple[int, int, int]:
    if not junit.exists():
        return 0, 1, 0
    root = ET.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    total = sum(int(s.get("tests", 0)) for s in suites)
    failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    if total == 0:
        return 0, 1, 0  # a stage that ran nothing has failed
    return total - failed - skipped, failed, skipped


def sanity_counts(log_path: Path) -> tuple[int, int, int]:
    if not log_path.exists():
        return 0, 1, 0
    log = log_path.read_text(errors="replace")
    ran = set(re.findall(r"""^Running sanity test ["']([^"']+)["']""", log, re.MULTILINE))
    # A test whose tool is missing is reported as a warning and not run.
    skipped = set(re.findall(r"""Skipping sanity test ["']([^"']+)["']""", log))
    skipped |= {"shellcheck"} & ran if 'Required program "shellcheck" not found' in log else set()
    failed: set[str] = set()
    listed = re.search(r"The \d+ sanity test\(s\) listed below .*? failed[^\n]*\n((?:[\w.-]+\n)+)", log)
    if listed:
        failed = set(listed.group(1).split())
    elif re.search(r"^(FATAL|ERROR):", log, re.MULTILINE) or not ran:
        failed = {"sanity"}
    return len(ran - failed - skipped), len(failed), len(skipped & ran)


def core_versions() -> list[str]:
    """The newer ansible-core versions `make test` runs on the Debian 13 controller: one requirements file each."""
    prefix = "requirements-core-"
    versions = [path.stem[len(prefix):] for path in Path(__file__).parent.glob(f"{prefix}*.txt")]
    return sorted(versions, key=lambda version: [int(part) for part in version.split(".")])


def outcome_counts(listing: Path) -> tuple[int, int, int]:
    """PASS/FAIL lines (`PASS name`); a missing or empty listing ran nothing, so it failed."""
    lines = listing.read_text().split() if listing.exists() else []
    outcomes = lines[0::2]
    return outcomes.count("PASS"), outcomes.count("FAIL") or (0 if outcomes else 1), 0


def main(results: Path) -> int:
    totals = [0, 0, 0]
    core_stages = []
    for version in core_versions():
        core_stages += [
            (f"unit (ansible-core {version})", junit_counts(results / f"unit-core-{version}.xml")),
            (f"sanity (ansible-core {version})", sanity_counts(results / f"sanity-core-{version}.log")),
        ]
    for stage, counts in (
        ("unit", junit_counts(results / "unit.xml")),
        ("sanity", sanity_counts(results / "sanity.log")),
        *core_stages,
        ("ecosystem", outcome_counts(results / "ecosystem.txt")),
        ("integration", outcome_counts(results / "integration.txt")),
        ("benchmark smoke", outcome_counts(results / "benchmark.txt")),
        ("lab", junit_counts(results / "lab.xml")),
    ):
        passed, failed, skipped = counts
        print(f"{stage}: {passed} passed, {failed} failed, {skipped} skipped")
        totals = [totals[0] + passed, totals[1] + failed, totals[2] + skipped]
    print(f"total: {totals[0]} passed, {totals[1]} failed, {totals[2]} skipped")
    return 1 if totals[1] else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
