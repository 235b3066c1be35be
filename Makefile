# The two commands a fresh machine needs (Rust toolchain and Python 3 are all it must have):
#
#   make demo   start the local stack and run the main job on it
#   make test   start a separate test stack, run fmt, clippy and every test, stop it (always)
#
# Everything the stack installs or stores lives under .flowhouse/ (gitignored).

SHELL := /bin/bash
STACK := deploy/local/stack
TEST_STACK_DIR := $(CURDIR)/.flowhouse/test-stack

.PHONY: demo demo-prefect test bench stack-up stack-down stack-status lint

demo:
	deploy/local/demo

# A real Prefect server and real flows, mirrored into Flowhouse (`flowhouse mirror prefect`); the
# tenant's dashboard from Flowhouse next to what Prefect reports.
demo-prefect:
	deploy/local/demo-prefect

# The end-to-end benchmark; size from BENCH_EVENTS. Writes bench/results/latest.json.
bench:
	deploy/local/bench

# The test stack is separate from the demo's, so tests never touch demo data; its data is deleted
# at the end, pass or fail.
test:
	@set -euo pipefail; \
	cargo fmt --all -- --check; \
	export FLOWHOUSE_STACK_DIR=$(TEST_STACK_DIR); \
	trap '$(STACK) reset' EXIT; \
	eval "$$($(STACK) up)"; \
	cargo clippy --workspace --all-targets --locked -- -D warnings; \
	cargo test --workspace --locked

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

stack-up:
	@$(STACK) up

stack-down:
	@$(STACK) down

stack-status:
	@$(STACK) status
