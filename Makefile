# Clarity job system: one command to run it locally, one to test it.
#
#   make up          install what is missing (Debian's redis-server, the venv), then
#                    `clarity up`: Redis, a worker per queue and the admin app until Ctrl-C
#   make up UP_ARGS="--redis-port 6391 --admin-port 8081"
#   make doctor      `clarity doctor` against the local stack
#   make test        the whole test suite: ruff, pytest, deployment lint and Molecule; every
#                    part runs even when an earlier one fails, and a summary ends the output
#   make test-python pytest only (PYTEST_ARGS="-x tests/test_delivery.py")
#   make test-deploy yamllint, ansible-lint, systemd-analyze and every Molecule scenario
#                    (CLARITY_SKIP_VM=1 leaves out the VM scenario on a machine without qemu;
#                    CI never does)
#
# Needs Debian or Ubuntu with python3 >= 3.11; uses sudo for apt-get unless run as root.

PYTHON ?= python3
VENV ?= .venv
STATE_DIR ?= .state
UP_ARGS ?=
PYTEST_ARGS ?=
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends

.PHONY: help up doctor test test-python test-deploy lint system-deps test-deps

# What the tests start for real: Redis, PostgreSQL, nginx, promtool, wrk, Chromium,
# podman/debootstrap/runc for the Molecule hosts, and qemu/vde2 for the Molecule VMs.
TEST_PACKAGES := redis-server redis-tools postgresql nginx prometheus wrk openssl \
	chromium chromium-driver podman debootstrap runc python3-venv make \
	qemu-system-x86 qemu-utils vde2 e2fsprogs openssh-client

help:
	@sed -n 's/^#   //p' $(firstword $(MAKEFILE_LIST))

up: system-deps $(VENV)/.installed
	$(VENV)/bin/clarity up --state-dir $(STATE_DIR) $(UP_ARGS)

doctor: $(VENV)/.installed
	CLARITY_ENV_FILE=$(STATE_DIR)/dev-secrets.env $(VENV)/bin/clarity doctor

test: test-deps system-deps $(VENV)/.installed-dev
	PYTEST_ARGS="$(PYTEST_ARGS)" bash .ci/test-all.sh

test-python: system-deps $(VENV)/.installed-dev
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-deploy: $(VENV)/.installed-dev
	bash .ci/molecule.sh

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .

test-deps:
	@missing=$$(for p in $(TEST_PACKAGES); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing Debian packages the tests need:" $$missing; \
	    $(SUDO) apt-get update -qq && $(APT_INSTALL) $$missing; fi

# Debian packages: redis-server (clarity up and the tests start private instances; the
# packaged service on 6379 is not used) and python3-venv (Debian's python3 lacks venv).
system-deps:
	@command -v redis-server >/dev/null 2>&1 || { \
	    echo "redis-server is missing: installing Debian's redis-server"; \
	    $(SUDO) apt-get update && $(APT_INSTALL) redis-server; }
	@[ -x $(VENV)/bin/python ] || $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	    echo "python3 venv support is missing: installing python3-venv"; \
	    $(SUDO) apt-get update && $(APT_INSTALL) python3-venv; }

# The venv, re-installed when pyproject.toml changes (editable: code changes need nothing).
$(VENV)/.installed: pyproject.toml
	[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml
	[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed
