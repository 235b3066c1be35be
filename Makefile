# The two commands a fresh machine needs (Rust toolchain and Python 3 are all it must have):
#
#   make demo   start the local stack and run the main job on it
#   make test   start a separate test stack, run fmt, clippy and every test, stop it (always)
#
# Everything the stack installs or stores lives under .flowhouse/ (gitignored).

SHELL := /bin/bash
STACK := deploy/local/stack
TEST_STACK_DIR := $(CURDIR)/.flowhouse/test-stack

.PHONY: demo test bench chaos contract fairness stack-up stack-down stack-status lint

demo:
	deploy/local/demo

# The end-to-end benchmark; size from BENCH_EVENTS. Writes bench/results/latest.json.
bench:
	deploy/local/bench

# `flowhouse loadtest run --chaos` at full size (CHAOS_EVENTS) on a stack of its own, deleted at
# the end: two ingest instances, 10 kill -9s, a restart each of ClickHouse, the broker and the
# endpoint; every card and the raw row counts verified; recovery times in the report.
chaos:
	deploy/local/chaos

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

# The OpenAPI contract at length: schemathesis with 500 examples per operation (make test: 25).
contract:
	@set -euo pipefail; \
	export FLOWHOUSE_STACK_DIR=$(TEST_STACK_DIR); \
	trap '$(STACK) reset' EXIT; \
	eval "$$($(STACK) up)"; \
	FLOWHOUSE_CONTRACT_EXAMPLES=$${FLOWHOUSE_CONTRACT_EXAMPLES:-500} \
	    cargo test --locked -p flowhouse-tests --test openapi_contract -- --nocapture

# Per-tenant fairness with its latency bound (B's p99 within 2× while A floods): run it on a
# quiet machine; make test checks the rest of it.
fairness:
	@set -euo pipefail; \
	export FLOWHOUSE_STACK_DIR=$(TEST_STACK_DIR); \
	trap '$(STACK) reset' EXIT; \
	eval "$$($(STACK) up)"; \
	FLOWHOUSE_FAIRNESS_STRICT=1 cargo test --locked -p flowhouse-tests --test fairness -- --nocapture

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

stack-up:
	@$(STACK) up

stack-down:
	@$(STACK) down

stack-status:
	@$(STACK) status
