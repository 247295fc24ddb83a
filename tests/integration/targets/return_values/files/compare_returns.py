"""Compare what the modules returned on the lab with what their RETURN documentation says.

Usage: compare_returns.py DOCS_JSON RESULTS_JSON
  DOCS_JSON     the output of `ansible-doc --json -t module <modules...>`
  RESULTS_JSON  a list of {"module": FQCN, "scenario": str, "result": registered result}

For every result, recursively through `contains`:
- each returned key is documented (the keys every Ansible module may return are left out);
- each documented key that is returned `always` (or `success`, when the task succeeded) is there;
- each value has the documented type (null stands for "nothing to report" and passes).
Across all results of a module, each documented top-level key must have been seen at least once,
so a scenario list that leaves a key untested fails too.
Prints one line per problem and exits 1 when there is any.
"""
from __future__ import annotations

import json
import sys
import typing as t

# Keys Ansible itself or every module may add; they are not part of a module's RETURN.
COMMON_KEYS = {
    "changed", "failed", "msg", "invocation", "diff", "warnings", "deprecations", "skipped",
    "skip_reason", "exception", "ansible_facts", "attempts", "retries",
}

TYPE_CHECKS: dict[str, t.Callable[[t.Any], bool]] = {
    "str": lambda value: isinstance(value, str),
    "path": lambda value: isinstance(value, str),
    "int": lambda value: isinstance(value, int) and not isinstance(value, bool),
    "float": lambda value: isinstance(value, (int, float)) and not isinstance(value, bool),
    "bool": lambda value: isinstance(value, bool),
    "list": lambda value: isinstance(value, list),
    "dict": lambda value: isinstance(value, dict),
    "raw": lambda value: True,
}


def required_now(spec: dict, failed: bool, parent_required: bool) -> bool:
    """Whether a documented key must be present in this result."""
    returned = str(spec.get("returned", "")).strip().lower()
    if not returned:
        # A nested key without its own condition comes with its parent.
        return parent_required
    return returned == "always" or (returned == "success" and not failed)


def compare(value: t.Any, spec: dict, where: str, failed: bool, problems: list[str]) -> None:
    """Check one value against its documentation, descending into `contains`."""
    if value is None:
        return
    doc_type = spec.get("type", "raw")
    check = TYPE_CHECKS.get(doc_type)
    if check is None:
        problems.append(f"{where}: documented type {doc_type!r} is not a known return type")
        return
    if not check(value):
        problems.append(f"{where}: documented as {doc_type}, returned {type(value).__name__} {value!r:.80}")
        return
    contains = spec.get("contains")
    if not contains:
        return
    if doc_type == "dict":
        compare_keys(value, contains, where, failed, True, problems)
    elif doc_type == "list":
        for index, element in enumerate(value):
            element_where = f"{where}[{index}]"
            elements = spec.get("elements", "dict")
            if elements == "dict" and isinstance(element, dict):
                compare_keys(element, contains, element_where, failed, True, problems)
            else:
                problems.append(f"{element_where}: documented with contains, returned {type(element).__name__}")


def compare_keys(returned: dict, documented: dict, where: str, failed: bool, parent_required: bool,
                 problems: list[str], top: bool = False) -> None:
    for key in sorted(returned):
        if top and (key in COMMON_KEYS or key.startswith("_ansible")):
            continue
        if key not in documented:
            problems.append(f"{where}.{key}: returned but not documented")
            continue
        compare(returned[key], documented[key], f"{where}.{key}", failed, problems)
    for key, spec in sorted(documented.items()):
        if key not in returned and required_now(spec, failed, parent_required):
            problems.append(f"{where}.{key}: documented as returned {spec.get('returned', 'with its parent')!r}, missing")


def main(docs_path: str, results_path: str) -> int:
    with open(docs_path) as docs_file:
        docs = json.load(docs_file)
    with open(results_path) as results_file:
        results = json.load(results_file)
    problems: list[str] = []
    seen: dict[str, set[str]] = {}
    for entry in results:
        module, scenario, result = entry["module"], entry["scenario"], entry["result"]
        if module not in docs:
            problems.append(f"{module}: no documentation found by ansible-doc")
            continue
        documented = docs[module].get("return") or {}
        compare_keys(result, documented, f"{module} ({scenario})", bool(result.get("failed")), True, problems, top=True)
        seen.setdefault(module, set()).update(result)
    for module in sorted(docs):
        for key in sorted(set(docs[module].get("return") or {}) - seen.get(module, set())):
            problems.append(f"{module}.{key}: documented but never returned in any scenario of this test")
    for problem in problems:
        print(problem)
    modules = sorted(seen)
    print(f"compared {len(results)} results of {len(modules)} modules: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
