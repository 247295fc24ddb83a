# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""docs/preflight.md lists every pre-flight check code with its severity and override.

The codes come from `_preflight.CHECKS`. What each check can report is read
from the source of its `check_*` function and the module-level helpers it
calls: the code and status of each `Finding(...)` it builds, and every string
literal that names an option of the preflight module (the options a finding's
`override` can name). Nothing here restates the checks, so a new code, status
or override in the code makes this test fail until the guide says it.
"""

from __future__ import annotations

import ast
import inspect
import pathlib
import typing as t

import pytest
import yaml

from ansible_collections.strata.migration.plugins.module_utils import _preflight
from ansible_collections.strata.migration.plugins.modules import preflight as preflight_module

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "preflight.md"
STATUS_NAMES = {"FAIL": _preflight.FAIL, "WARN": _preflight.WARN}
NO_OVERRIDE = "cannot be overridden"


class CheckSource(t.NamedTuple):
    codes: t.Set[str]
    statuses: t.Set[str]
    overrides: t.Set[str]


def _module_options() -> t.Set[str]:
    return set(yaml.safe_load(preflight_module.DOCUMENTATION)["options"])


def _read_check(
    name: str,
    functions: t.Mapping[str, ast.FunctionDef],
    options: t.Set[str],
    seen: t.Optional[t.Set[str]] = None,
) -> CheckSource:
    """Codes, statuses and option names found in function `name` and the module functions it calls."""
    seen = set() if seen is None else seen
    found = CheckSource(set(), set(), set())
    if name in seen:
        return found
    seen.add(name)
    for node in ast.walk(functions[name]):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id == "Finding":
                if node.args and isinstance(node.args[0], ast.Constant):
                    found.codes.add(node.args[0].value)
            elif node.func.id in functions:
                inner = _read_check(node.func.id, functions, options, seen)
                found.statuses.update(inner.statuses)
                found.overrides.update(inner.overrides)
        elif isinstance(node, ast.Name) and node.id in STATUS_NAMES:
            found.statuses.add(STATUS_NAMES[node.id])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in options:
            found.overrides.add(node.value)
    return found


def _checks_in_code() -> t.Dict[str, CheckSource]:
    """What each check code can report, by code, read from the check functions' source."""
    tree = ast.parse(inspect.getsource(_preflight))
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    options = _module_options()
    checks: t.Dict[str, CheckSource] = {}
    for name in functions:
        if not name.startswith("check_"):
            continue
        source = _read_check(name, functions, options)
        assert len(source.codes) == 1, "%s builds findings of %s, expected one code" % (name, source.codes)
        checks[source.codes.pop()] = source
    return checks


def _doc_rows(text: str) -> t.Dict[str, t.List[str]]:
    """The rows of the check code table: code -> [severity, when, override]."""
    section = text.split("## Check codes", 1)[1].split("\n## ", 1)[0]
    rows: t.Dict[str, t.List[str]] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        assert len(cells) == 4, "a row of the check code table needs 4 cells: %s" % line
        code = cells[0].strip("`")
        assert code not in rows, "check code %s is listed twice" % code
        rows[code] = cells[1:]
    return rows


CODE_CHECKS = _checks_in_code()


def test_every_check_function_reports_a_declared_code():
    assert set(CODE_CHECKS) == set(_preflight.CHECKS)


def test_some_checks_name_an_override():
    # Guards the source reading itself: the checks do name options, so finding none means it broke.
    assert any(source.overrides for source in CODE_CHECKS.values())


@pytest.mark.parametrize("code", _preflight.CHECKS)
def test_doc_lists_code_with_severity_and_override(code):
    rows = _doc_rows(DOC.read_text(encoding="utf-8"))
    assert code in rows, "docs/preflight.md has no row for check code `%s`" % code
    severity, _when, override = rows[code]
    source = CODE_CHECKS[code]
    for status in sorted(source.statuses):
        assert status in severity, "`%s` can %s, its row's severity says %r" % (code, status, severity)
    for option in sorted(source.overrides):
        assert "`%s`" % option in override, "`%s` can be overridden by `%s`, its row says %r" % (code, option, override)
    if not source.overrides:
        assert NO_OVERRIDE in override, "`%s` has no override: its row must say '%s' and why" % (code, NO_OVERRIDE)


def test_doc_lists_no_unknown_code():
    rows = _doc_rows(DOC.read_text(encoding="utf-8"))
    assert set(rows) <= set(_preflight.CHECKS)
