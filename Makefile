# The two commands of the README: `make demo` and `make test`. Both run as root on a
# Debian machine and install what they need.
SHELL := /bin/bash
VENV := .venv
LAB := lab/strata-lab
LAB_DIR ?= /var/lib/strata-lab
COLLECTIONS := .build/collections
STAGE := $(COLLECTIONS)/ansible_collections/strata/migration

export ANSIBLE_COLLECTIONS_PATH := $(abspath $(COLLECTIONS))
export ANSIBLE_FORCE_COLOR ?= 0

.PHONY: demo demo-guests test venv stage lab-up lab-down clean bench

# The main job: a maintenance window on hv1 of the lab. Each run records its own manifest and
# reports under $(LAB_DIR)/demo/. UPGRADE=trixie makes it a rolling upgrade of every host to that
# stack (libvirt 11, QEMU 10), the VMs brought home live onto each upgraded host.
UPGRADE ?=
demo: venv stage demo-guests
	@run=$(LAB_DIR)/demo/window-$$(date +%Y%m%d-%H%M%S); mkdir -p $(LAB_DIR)/demo && \
	$(VENV)/bin/ansible-playbook -i $(LAB_DIR)/inventory.yml playbooks/demo_lab.yml \
	  -e maintenance_window_manifest_path=$$run-manifest.json \
	  -e maintenance_window_report_json=$$run-report.json -e maintenance_window_report_junit=$$run-junit.xml \
	  -e demo_upgrade_stack=$(UPGRADE) && \
	echo "Manifest and reports: $$run-*"
	@# The guests with disks wrote checksummed blocks all along: each must read them back intact.
	@for name in demo-web1 demo-db; do \
	  $(LAB) guest check-disk "$$name" | $(VENV)/bin/python -c 'import json, sys; r = json.load(sys.stdin); \
	    ok = r["intact"] and len(r["boots_seen"]) == 1; \
	    print(r["name"] + ": " + ("disk intact" if r["intact"] else "DISK ERRORS %s" % r["error_lines"]) \
	          + ", %d blocks written and read back, boots seen: %s" % (r["disk_writes"], r["boots_seen"])); \
	    sys.exit(not ok)' || exit 1; \
	done
	@echo "The lab is still up. Explore it with: $(LAB) status    Bring it down with: $(LAB) down"

test: venv
	bash tests/run-all.sh

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt tests/requirements.txt
	$(LAB) deps
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.txt -r tests/requirements.txt
	touch $@

# ansible-test needs the collection at ansible_collections/strata/migration: a copy of
# the tracked and new files, so local caches never reach it.
stage:
	rm -rf $(STAGE) && mkdir -p $(STAGE)
	git ls-files -z --cached --others --exclude-standard \
	  | tar --null --ignore-failed-read -T - -cf - | tar -xf - -C $(STAGE)
	# Its own git index: ansible-test lists files with git, and this repository ignores .build.
	cd $(STAGE) && git init -q && git add -A

lab-up:
	$(LAB) up

lab-down:
	$(LAB) down

clean:
	rm -rf .build tests/output

# Guests with different memory behaviour for the demo (name:host:MiB:anti-affinity group:disk:workload,
# disk = pool/MiB or -); kept (and started) when they exist. hv1 holds five of them; demo-web1 may not
# join demo-web2; demo-web1's disk is on the lab's NBD server (shared), demo-db's in hv1's own pool
# (copied with the move: demo_lab.yml sets maintenance_window_copy_storage).
DEMO_GUESTS := demo-idle:hv1:256:-:-:idle demo-stale:hv1:512:-:-:stale:300 demo-hot:hv1:256:-:-:hot:128:32:2000 \
  demo-web1:hv1:128:web:nbd/32:disk:16:20 demo-db:hv1:128:-:local/64:disk:16:50 demo-web2:hv2:128:web:-:idle \
  demo-small:hv3:128:-:-:idle
demo-guests: lab-up
	@for spec in $(DEMO_GUESTS); do \
	  IFS=: read -r name host mem group disk workload <<< "$$spec"; \
	  options=(); [ "$$group" = - ] || options+=(--anti-affinity "$$group"); \
	  [ "$$disk" = - ] || options+=(--disk-pool "$${disk%/*}" --disk-mib "$${disk#*/}"); \
	  $(LAB) guest create "$$name" --host "$$host" --memory-mib "$$mem" --workload "$$workload" "$${options[@]}" \
	    --reuse >/dev/null || exit 1; \
	done

# The engine against plain libvirt migration (benchmarks/results/live_migrate.*), then a move with
# a storage copy against plain virsh (benchmarks/results/storage.*), then incompressible shaking
# pages (benchmarks/results/shaking.*), then a crashed host's VMs restarted through the rulebook
# (benchmarks/results/recovery.*); the benchmarks import the collection from this checkout
# (labkit.use_collection), so nothing is staged. They run on the lab's hosts of BENCH_STACK: stock
# (the machine's libvirt and QEMU, results in benchmarks/results/) or trixie (libvirt 11, QEMU 10,
# results in benchmarks/results/trixie/). Changing the stack stops the lab's running guests.
# A smoke run: make bench BENCH_ARGS=--quick (results in a tmp/ folder beside them).
BENCH_STACK ?= stock
BENCH_OUT := benchmarks/results$(if $(filter-out stock,$(BENCH_STACK)),/$(BENCH_STACK))
bench: venv
	$(LAB) up --stack all=$(BENCH_STACK)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r benchmarks/requirements.txt
	$(VENV)/bin/python benchmarks/live_migrate_benchmark.py --out-dir $(BENCH_OUT) $(BENCH_ARGS)
	$(VENV)/bin/python benchmarks/storage_benchmark.py --out-dir $(BENCH_OUT) $(BENCH_ARGS)
	$(VENV)/bin/python benchmarks/shaking_benchmark.py --out-dir $(BENCH_OUT) $(BENCH_ARGS)
	$(VENV)/bin/python benchmarks/recovery_benchmark.py --out-dir $(BENCH_OUT) $(BENCH_ARGS)
