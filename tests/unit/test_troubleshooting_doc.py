# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Every error message a user can meet is explained in docs/troubleshooting.md.

The messages are read from the source, not listed by hand, so a new or reworded
message fails this test until the document shows it.

What counts as a message (Python: plugins/module_utils, modules, action, filter):

- the string arguments of a call that raises or builds an error: an exception
  class (a name ending in Error or Fail), an error helper (`_*_error`),
  `fail_json`, `fail` (the migration run's failure) and `warning`;
- a string assigned to `msg` (a variable, an attribute or a `["msg"]` key),
  or passed as the `msg` or `error` keyword of any call, and a variable
  passed to one of those calls, resolved to the strings assigned to it in
  the same function;
- every string in the functions of MESSAGE_PARTS, which compose parts of
  messages (causes, hints, where the VM runs).

In roles/*/tasks/*.yml: the `msg` of ansible.builtin.fail and the `fail_msg`
(or `msg`) of ansible.builtin.assert. `{% ... %}` splits a template into
separate pieces (the branches of an if, the body of a for); `{{ ... }}` is a
placeholder.

A message is a template: its literal text, with a placeholder for every value
filled in (`%s`, `%d`, `%r`, `%.1f`, an f-string field, a `{{ }}` expression, a
non-literal operand of `+`). The document must contain each template with its
literal text exactly (whitespace may differ) and every placeholder written as
`<something>`, for example `domain '<vm>' is not defined on <host>`. Only
templates with at least MIN_LITERAL_CHARS characters of literal text (spaces
not counted) are required: `"%s: %s"` says nothing on its own. A template that
is a single name (`"evacuate_hosts"`, `"%s.name"`, `"destination"`) is an
option, an element path or a key passed along, not a message.
"""

from __future__ import annotations

import ast
import pathlib
import re
import typing as t

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "troubleshooting.md"
PYTHON_DIRS = ("plugins/module_utils", "plugins/modules", "plugins/action", "plugins/filter")
ROLE_TASK_GLOB = "roles/*/tasks/*.yml"

MIN_LITERAL_CHARS = 10
PLACEHOLDER = r"<[^<>]+>"
# An option name, a key or an element path ("evacuate_hosts", "hosts[].name"): not a message.
NAME_ONLY = re.compile(r"[\w.\[\]]*")

# Calls whose string arguments are error messages.
ERROR_CALL = re.compile(r"^(?:[A-Z]\w*(?:Error|Fail)|_\w+_error|fail|fail_json|warning)$")
MESSAGE_KEYWORDS = frozenset(("msg", "error"))
# printf-style conversions; %% is a literal percent sign.
CONVERSION = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\d+|\*)?(?:\.\d+)?[diouxXeEfFgGcrsa%]")
# Calls inside MESSAGE_PARTS functions whose strings are not message text (timeline events).
NOT_MESSAGE_CALLS = frozenset(("event", "add", "display"))

# Functions (file, qualified name) whose strings become parts of a user-facing message.
MESSAGE_PARTS = {
    ("plugins/module_utils/_migrate.py", "_Run.finish_failure"): "the cause, the hint and the end of a failed migration",
    ("plugins/module_utils/_migrate.py", "_Run.finish_success"): "what the check after a migration found wrong",
    ("plugins/module_utils/_migrate.py", "_Run.watch_recovery"): "why a post-copy recovery attempt was given up",
    ("plugins/module_utils/_migrate.py", "_runs_on"): "where the VM runs, at the end of a migration failure",
    ("plugins/module_utils/_engine.py", "_Monitor.guard"): "the detail and hint of a guard that aborted a migration",
    ("plugins/module_utils/_preflight.py", "PreflightReport.failure_message"): "the message of failed pre-flight checks",
    ("plugins/module_utils/_compaction.py", "describe_shortfall"): "why the balloon stopped short (require_target)",
    ("plugins/module_utils/_compaction.py", "_finish"): "the shortfall message (require_target)",
    ("plugins/action/migration_wait.py", "timeout_message"): "migration_wait's timeout failure",
    ("plugins/module_utils/_workflow.py", "evacuation_remaining"): "why a VM stayed, in the evacuate role's failure",
}

# Messages a user cannot meet: internal invariants, or inputs checked before them.
# Each entry: (file, a piece of the template's literal text) -> why it is not documented.
NOT_USER_FACING = {
    # The model's inputs come from options live_migrate and preflight have checked already.
    ("plugins/module_utils/_convergence.py", " must be a number, got "): "model input, checked as an option first",
    ("plugins/module_utils/_convergence.py", " must be a finite number, got "): "model input, checked as an option first",
    ("plugins/module_utils/_convergence.py", " must be greater than "): "model input, checked as an option first",
    ("plugins/module_utils/_convergence.py", " or more, got "): "model input, checked as an option first",
    ("plugins/module_utils/_convergence.py", "max_rounds must be a whole number"): "model constant, not an option",
    ("plugins/module_utils/_convergence.py", "estimate_hot_set needs at least one"): "called with its own samples",
    # connect_timeout_s is checked to be at least 1 by every module before a connection opens.
    ("plugins/module_utils/_libvirt.py", "connect_timeout_s must be positive"): "checked earlier as an option",
    ("plugins/module_utils/_engine.py", "unknown progress phase"): "the phases are constants of the engine",
    ("plugins/module_utils/_progress.py", "unknown progress phase"): "the phases are constants of the engine",
    ("plugins/module_utils/_migrate.py", "wait() before start()"): "the engine always starts a job before waiting",
    # evaluate() fails the domain_running check first, which is enforced even with preflight: false.
    ("plugins/module_utils/_migrate.py", "is not defined on the source"): "the domain_running check reports it",
}


class Template(t.NamedTuple):
    """A message: literal strings and None for each placeholder, and where it is."""

    parts: t.Tuple[t.Optional[str], ...]
    where: str

    @property
    def literal(self) -> str:
        """The literal text, placeholders left out."""
        return "".join(part for part in self.parts if part is not None)

    @property
    def is_message(self) -> bool:
        text = self.literal.strip()
        return not NAME_ONLY.fullmatch(text) and len("".join(text.split())) >= MIN_LITERAL_CHARS

    def shown(self) -> str:
        return "".join("<...>" if part is None else part for part in self.parts).strip()

    def pattern(self) -> "re.Pattern[str]":
        pieces = []
        for part in _strip_ends(self.parts):
            if part is None:
                pieces.append(PLACEHOLDER)
            else:
                pieces.append(r"\s+".join(re.escape(word) for word in re.split(r"\s+", part)))
        return re.compile("".join(pieces))


def _strip_ends(parts: t.Sequence[t.Optional[str]]) -> t.List[t.Optional[str]]:
    parts = [part for part in parts if part != ""]
    if parts and parts[0] is not None:
        parts[0] = parts[0].lstrip()
    if parts and parts[-1] is not None:
        parts[-1] = parts[-1].rstrip()
    return [part for part in parts if part != ""]


# ---- Python ---------------------------------------------------------------------


def _format_parts(text: str) -> t.List[t.Optional[str]]:
    """A printf-style format string as literal pieces and None for each conversion."""
    parts: t.List[t.Optional[str]] = []
    position = 0
    for match in CONVERSION.finditer(text):
        literal = text[position:match.start()]
        if match.group() == "%%":
            parts.append(literal + "%")
        else:
            parts.extend((literal, None))
        position = match.end()
    parts.append(text[position:])
    return _merge(parts)


def _merge(parts: t.Sequence[t.Optional[str]]) -> t.List[t.Optional[str]]:
    """Join adjacent literals, keep placeholders apart."""
    merged: t.List[t.Optional[str]] = []
    for part in parts:
        if part is not None and merged and merged[-1] is not None:
            merged[-1] = t.cast(str, merged[-1]) + part
        else:
            merged.append(part)
    return merged


def template_parts(node: ast.AST) -> t.Optional[t.List[t.Optional[str]]]:
    """The template of a string expression, or None when `node` builds no string of its own."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return _merge([v.value if isinstance(v, ast.Constant) else None for v in node.values])
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
        if isinstance(node.left, ast.Constant) and isinstance(node.left.value, str):
            return _format_parts(node.left.value)
        return None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = template_parts(node.left), template_parts(node.right)
        if left is None and right is None:
            return None
        return _merge((left or [None]) + (right or [None]))
    return None


def _callee_name(call: ast.Call) -> str:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return ""


def _is_msg_target(target: ast.AST) -> bool:
    if isinstance(target, ast.Name):
        return target.id == "msg"
    if isinstance(target, ast.Attribute):
        return target.attr == "msg"
    if isinstance(target, ast.Subscript):
        return isinstance(target.slice, ast.Constant) and target.slice.value == "msg"
    return False


def _assigned_values(function: ast.AST, name: str) -> t.List[ast.AST]:
    values = []
    for node in ast.walk(function):
        if isinstance(node, ast.Assign) and any(isinstance(x, ast.Name) and x.id == name for x in node.targets):
            values.append(node.value)
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
            values.append(node.value)
    return values


def _functions(tree: ast.AST) -> t.Iterator[t.Tuple[str, ast.AST]]:
    """(qualified name, node) of every function, methods as Class.method."""

    def visit(node: ast.AST, prefix: str) -> t.Iterator[t.Tuple[str, ast.AST]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield prefix + child.name, child
                yield from visit(child, prefix + child.name + ".")
            elif isinstance(child, ast.ClassDef):
                yield from visit(child, prefix + child.name + ".")

    yield from visit(tree, "")


def _docstrings(tree: ast.AST) -> t.Set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _message_part_nodes(function: ast.AST, docstrings: t.Set[int]) -> t.Iterator[ast.AST]:
    """The outermost string expressions in `function`, outside timeline and display calls."""

    def visit(node: ast.AST) -> t.Iterator[ast.AST]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Call) and _callee_name(child) in NOT_MESSAGE_CALLS:
                continue
            if id(child) not in docstrings and template_parts(child) is not None:
                yield child
                # A literal inside the values of a format ("... %s" % ("a" if x else "b")) counts too.
                if isinstance(child, ast.BinOp):
                    yield from visit(child.right)
                continue
            yield from visit(child)

    yield from visit(function)


def python_templates(source: str, path: str) -> t.List[Template]:
    """The message templates of one Python file (see the module docstring)."""
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    found: t.Dict[int, ast.AST] = {}
    enclosing: t.Dict[int, ast.AST] = {}
    for _name, function in _functions(tree):
        for node in ast.walk(function):
            enclosing[id(node)] = function

    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ERROR_CALL.match(_callee_name(node)):
            arguments = list(node.args) + [kw.value for kw in node.keywords if kw.arg in MESSAGE_KEYWORDS]
            for argument in arguments:
                if template_parts(argument) is not None:
                    found[id(argument)] = argument
                elif isinstance(argument, ast.Name) and id(node) in enclosing:
                    for value in _assigned_values(enclosing[id(node)], argument.id):
                        if template_parts(value) is not None:
                            found[id(value)] = value
        if isinstance(node, ast.Call):
            for keyword in node.keywords:
                if keyword.arg in MESSAGE_KEYWORDS and template_parts(keyword.value) is not None:
                    found[id(keyword.value)] = keyword.value
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(_is_msg_target(target) for target in targets) and template_parts(node.value) is not None:
                found[id(node.value)] = node.value

    for name, function in _functions(tree):
        if (path, name) in MESSAGE_PARTS:
            for node in _message_part_nodes(function, docstrings):
                found[id(node)] = node

    templates = [
        Template(tuple(t.cast(t.List[t.Optional[str]], template_parts(node))), "%s:%d" % (path, node.lineno))
        for node in found.values()
    ]
    return sorted(templates, key=lambda item: int(item.where.rsplit(":", 1)[1]))


# ---- roles ----------------------------------------------------------------------

JINJA_BLOCK = re.compile(r"\{%.*?%\}", re.S)
JINJA_EXPRESSION = re.compile(r"\{\{.*?\}\}", re.S)
FAIL_MODULES = {"fail": ("msg",), "assert": ("fail_msg", "msg")}


def jinja_templates(text: str, where: str) -> t.List[Template]:
    """One template per piece between `{% %}` tags, `{{ }}` as placeholders."""
    templates = []
    for piece in JINJA_BLOCK.split(text):
        parts: t.List[t.Optional[str]] = []
        position = 0
        for match in JINJA_EXPRESSION.finditer(piece):
            parts.extend((piece[position:match.start()], None))
            position = match.end()
        parts.append(piece[position:])
        templates.append(Template(tuple(_merge(parts)), where))
    return templates


def _tasks(items: t.Any) -> t.Iterator[t.Mapping[str, t.Any]]:
    for task in items or []:
        if not isinstance(task, dict):
            continue
        yield task
        for section in ("block", "rescue", "always"):
            yield from _tasks(task.get(section))


def role_templates(text: str, path: str) -> t.List[Template]:
    """The fail and assert messages of one role task file, with the line of their task."""
    lines = text.splitlines()
    templates = []
    for task in _tasks(yaml.safe_load(text)):
        for module, keys in FAIL_MODULES.items():
            args = task.get("ansible.builtin." + module, task.get(module))
            if not isinstance(args, dict):
                continue
            message = next((args[key] for key in keys if isinstance(args.get(key), str)), None)
            if message is None:
                continue
            line = next((number for number, content in enumerate(lines, 1)
                         if content.strip() == "- name: %s" % task.get("name")), 0)
            templates.extend(jinja_templates(message, "%s:%d" % (path, line)))
    return templates


# ---- the collection -----------------------------------------------------------------


def all_templates() -> t.List[Template]:
    templates = []
    for directory in PYTHON_DIRS:
        for file in sorted((ROOT / directory).glob("*.py")):
            path = file.relative_to(ROOT).as_posix()
            templates.extend(python_templates(file.read_text(encoding="utf-8"), path))
    for file in sorted(ROOT.glob(ROLE_TASK_GLOB)):
        templates.extend(role_templates(file.read_text(encoding="utf-8"), file.relative_to(ROOT).as_posix()))
    return templates


def _excluded_by(template: Template) -> t.List[t.Tuple[str, str]]:
    """The NOT_USER_FACING entries that match `template`."""
    path = template.where.rsplit(":", 1)[0]
    return [key for key in NOT_USER_FACING if key[0] == path and key[1] in template.literal]


def required_templates() -> t.List[Template]:
    return [
        template for template in all_templates()
        if template.is_message and not _excluded_by(template)
    ]


def _normalized_doc() -> str:
    return " ".join(DOC.read_text(encoding="utf-8").split())


def test_every_user_facing_message_is_in_troubleshooting_md():
    doc = _normalized_doc()
    missing = [template for template in required_templates() if not template.pattern().search(doc)]
    if missing:
        pytest.fail(
            "docs/troubleshooting.md does not show these messages (write each one exactly, with every "
            "placeholder as <name>; exclude internal ones in NOT_USER_FACING with a reason):\n"
            + "\n".join("  %s: %s" % (template.where, template.shown()) for template in missing),
            pytrace=False,
        )


def test_every_exclusion_still_matches_a_message():
    used = {key for template in all_templates() for key in _excluded_by(template)}
    stale = sorted(set(NOT_USER_FACING) - used)
    assert not stale, "NOT_USER_FACING entries that match no message any more: %s" % stale


def test_every_message_part_function_exists():
    known = set()
    for path in {path for path, _name in MESSAGE_PARTS}:
        tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
        known.update((path, name) for name, _node in _functions(tree))
    assert not set(MESSAGE_PARTS) - known, "MESSAGE_PARTS names functions that no longer exist"


def test_the_sources_yield_messages_of_every_kind():
    wheres = [template.where for template in required_templates()]
    for source in ("plugins/module_utils/", "plugins/modules/", "plugins/action/", "plugins/filter/", "roles/"):
        assert any(where.startswith(source) for where in wheres), source


# ---- the extraction rules themselves ---------------------------------------------------


def _shown(source: str) -> t.List[str]:
    return [template.shown() for template in python_templates(source, "x.py")]


@pytest.mark.parametrize("source, expected", [
    ("raise FooError('plain text here')", ["plain text here"]),
    ("raise FooError('VM %s on %d hosts: %.1f%% done' % (a, b, c))", ["VM <...> on <...> hosts: <...>% done"]),
    ("raise FooError(f'VM {name} is gone')", ["VM <...> is gone"]),
    ("raise self.fail(report.text() + '; nothing was changed')", ["<...>; nothing was changed"]),
    ("module.fail_json(msg='bad option value', option='x')", ["bad option value"]),
    ("raise _item_error('plan', index, 'vm must be a name')", ["plan", "vm must be a name"]),
    ("job.msg = 'no job file for %s' % jid", ["no job file for <...>"]),
    ("def f():\n    msg = 'it failed: %s' % why\n    msg += '; run it again'\n    raise self.fail(msg)",
     ["it failed: <...>", "; run it again"]),
    ("raise FooError(str(exc))", []),
    ("display.display('  %s: running' % label)", []),
])
def test_python_extraction(source, expected):
    assert _shown(source) == expected


def test_message_parts_functions_skip_docstrings_and_timeline_events():
    source = (
        "def timeout_message(n):\n"
        "    '''Say it.'''\n"
        "    self.event('layer', note='a timeline note only')\n"
        "    return 'gave up after %d s; raise timeout_s' % n\n"
    )
    templates = python_templates(source, "plugins/action/migration_wait.py")
    assert [template.shown() for template in templates] == ["gave up after <...> s; raise timeout_s"]


def test_role_extraction_splits_jinja_blocks_and_marks_expressions():
    text = (
        "- name: Check\n"
        "  ansible.builtin.assert:\n"
        "    that: x\n"
        "    fail_msg: >-\n"
        "      {% if a %}hosts is empty: name them.{% else %}{{ n }} hosts are not in the cluster.{% endif %}\n"
    )
    templates = role_templates(text, "roles/r/tasks/main.yml")
    assert [template.shown() for template in templates if template.is_message] == [
        "hosts is empty: name them.", "<...> hosts are not in the cluster."]
    assert {template.where for template in templates} == {"roles/r/tasks/main.yml:1"}


def test_the_doc_must_write_placeholders_as_names_in_angle_brackets():
    template = Template(("domain '", None, "' is not defined on ", None), "x.py:1")
    assert template.pattern().search("`domain '<vm>' is not defined on <host>`")
    assert not template.pattern().search("`domain 'web1' is not defined on hv1`")
    assert not template.pattern().search("`domain '<vm>' is defined on <host>`")
