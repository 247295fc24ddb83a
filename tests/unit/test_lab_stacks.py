# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Which stack each lab host runs (`up --stack`), and the legacy host's CPU map on either stack.

Starting hosts needs root and the lab; the lab's own tests and the generations and
workflow_rebalance integration targets do that. These tests cover what needs neither.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

# The lab tool is no package of the collection: it is imported from its folder in this checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "lab"))
lab_main = importlib.import_module("strata_lab.__main__")
lab_config = importlib.import_module("strata_lab.config")
lab_hosts = importlib.import_module("strata_lab.hosts")


def test_hosts_keep_their_recorded_stack_unless_named():
    recorded = {"hv1": "trixie", "hv2": "stock"}
    assert lab_main._host_stacks(None, 3, recorded) == {"hv1": "trixie", "hv2": "stock", "hv3": "stock"}
    assert lab_main._host_stacks(["hv2=trixie"], 3, recorded) == {"hv1": "trixie", "hv2": "trixie", "hv3": "stock"}


def test_all_sets_every_host_and_a_later_word_wins():
    stacks = lab_main._host_stacks(["all=trixie", "hv3=stock"], 3, {})
    assert stacks == {"hv1": "trixie", "hv2": "trixie", "hv3": "stock"}
    assert lab_main._host_stacks(["all=stock"], 2, {"hv1": "trixie", "hv2": "trixie"}) == {"hv1": "stock", "hv2": "stock"}


@pytest.mark.parametrize("word, message", [
    ("hv4=trixie", "HOST one of hv1..hv3 or all"),
    ("hv1", "expected HOST=STACK"),
    ("hv1=bogus", "unknown stack 'bogus'"),
])
def test_bad_stack_words_are_refused(word, message):
    with pytest.raises(lab_config.LabError, match=message):
        lab_main._host_stacks([word], 3, {})


def _cpu_map(root: Path, models: list[str]) -> None:
    folder = root / "usr/share/libvirt/cpu_map"
    folder.mkdir(parents=True)
    (folder / "index.xml").write_text(
        "<cpus>\n" + "".join(f"  <include filename='x86_{model}.xml'/>\n" for model in models) + "</cpus>\n")
    for model in models:
        (folder / f"x86_{model}.xml").write_text(f"<cpus><model name='{model}'/></cpus>\n")


def test_legacy_map_drops_the_model_with_its_versioned_variants(tmp_path):
    # libvirt 11's Westmere-v1 names Westmere as its ancestor: left alone, it would disable every model.
    stack_root = tmp_path / "root"
    _cpu_map(stack_root, ["qemu64", "Westmere", "Westmere-IBRS", "Westmere-v1", "Westmere-v2", "Nehalem"])
    host = lab_config.make_host_spec(tmp_path / "lab", 3, 3072, legacy=True, stack="trixie",
                                     stack_root=str(stack_root))
    Path(host.root).mkdir(parents=True)
    lab_hosts._write_legacy_cpu_map(host)
    written = Path(host.root) / "cpu_map"
    assert sorted(path.name for path in written.glob("x86_*.xml")) == ["x86_Nehalem.xml", "x86_qemu64.xml"]
    index = (written / "index.xml").read_text()
    assert "Westmere" not in index
    assert "x86_Nehalem.xml" in index and "x86_qemu64.xml" in index
