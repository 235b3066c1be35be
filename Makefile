# The two commands a fresh machine needs (Rust toolchain and Python 3 are all it must have):
#
#   make demo   start the local stack and run the main job on it
#   make test   start a separate test stack, run fmt, clippy and every test, stop it (always)
#
# Everything the stack installs or stores lives under .flowhouse/ (gitignored).

SHELL := /bin/bash
STACK := deploy/local/stack
TEST_STACK_DIR := $(CURDIR)/.flowhouse/test-stack

.PHONY: demo demo-prefect test bench chaos contract fairness fuzz browser stack-up stack-down stack-status lint

demo:
	deploy/local/demo

# A real Prefect server and real flows, mirrored into Flowhouse (`flowhouse mirror prefect`); the
# tenant's dashboard from Flowhouse next to what Prefect reports.
demo-prefect:
	deploy/local/demo-prefect

# The end-to-end benchmark; size from BENCH_EVENTS. Writes bench/results/latest.json.
bench:
	deploy/local/bench

# `flowhouse loadtest run --chaos` at full size (CHAOS_EVENTS) on a stack of its own, deleted at
# the end: two ingest instances, 10 kill -9s, a restart each of ClickHouse, the broker and the
# endpoint; every card and the raw row counts verified; recovery times in the report.
chaos:
	deploy/local/chaos

# The test stack is separate from the demo's, so tests never touch demo data; its data is deleted
# at the end, pass or fail. The dashboard's browser tests are among them (headless Chromium, which
# the stack installs on first use when it can, or names the command that does).
test:
	FLOWHOUSE_STACK_DIR=$(TEST_STACK_DIR) deploy/local/test

# The OpenAPI contract at length: schemathesis with 500 examples per operation (make test: 25).
contract:
	@set -euo pipefail; \
	export FLOWHOUSE_STACK_DIR=$(TEST_STACK_DIR); \
	trap '$(STACK) reset' EXIT; \
	eval "$$($(STACK) up)"; \
	FLOWHOUSE_CONTRACT_EXAMPLES=$${FLOWHOUSE_CONTRACT_EXAMPLES:-500} \
	    cargo test --locked -p flowhouse-tests --test openapi_contract -- --nocapture

# Per-tenant fairness with its latency bound (B's p99 within 2× while A floods), against the
# release build: run it on a quiet machine; make test checks the rest of it.
fairness:
	@set -euo pipefail; \
	export FLOWHOUSE_STACK_DIR=$(TEST_STACK_DIR); \
	trap '$(STACK) reset' EXIT; \
	cargo build --release --locked -p flowhouse --features loadtest; \
	eval "$$($(STACK) up)"; \
	FLOWHOUSE_BIN=$(CURDIR)/target/release/flowhouse FLOWHOUSE_FAIRNESS_STRICT=1 FLOWHOUSE_FAIRNESS_SAMPLES=400 \
	    cargo test --locked -p flowhouse-tests --test fairness -- --nocapture

# Every fuzz target (cargo fuzz, and atheris for the bridge's framing decoder) for FUZZ_SECONDS
# each (default 300; make test runs 10). FUZZ_MERGE=1 merges new coverage into fuzz/corpus/.
fuzz:
	deploy/local/fuzz

# The dashboard in headless Chromium alone; screenshots in target/dashboard-screenshots/.
browser:
	@set -euo pipefail; \
	export FLOWHOUSE_STACK_DIR=$(TEST_STACK_DIR); \
	trap '$(STACK) reset' EXIT; \
	eval "$$($(STACK) up)"; \
	cargo test --locked -p flowhouse-query-api --test dashboard -- --nocapture

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

stack-up:
	@$(STACK) up

stack-down:
	@$(STACK) down

stack-status:
	@$(STACK) status
