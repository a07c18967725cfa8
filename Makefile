# ferry: the two commands a newcomer runs on a fresh machine, as root:
#   make demo   the local two-cluster demo
#   make test   unit tests + lab e2e tests (what CI runs)
# Both install what they need (scripts/provision.sh) and cache what is slow to build in ~/.cache/ferry.

SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/ferry/target
# incremental state grows to tens of GB in the shared cache over many runs; clean builds cost little here
export CARGO_INCREMENTAL ?= 0
BIN      := $(CARGO_TARGET_DIR)/debug
LAB      := $(BIN)/ferry-lab
DEMO_LAB ?= ferry
E2E_LAB  ?= e2e
E2E_PORT ?= 24000
FUZZ_SECONDS ?= 8
REAL_NODES ?= 2

.PHONY: deps build demo test unit lint e2e crds down fuzz

deps:
	@bash scripts/provision.sh

build: deps
	cargo build --workspace --bins
	@ln -sf ferryctl $(BIN)/kubectl-ferry   # kubectl plugin: PATH=$(BIN):$$PATH kubectl ferry status

crds:
	cargo run -q -p ferry-crds --bin crdgen > charts/ferry/crds/ferry.yaml

demo: build
	@$(LAB) --name $(DEMO_LAB) down >/dev/null
	$(LAB) --name $(DEMO_LAB) up --real-nodes $(REAL_NODES)
	$(LAB) --name $(DEMO_LAB) demo

down:
	$(LAB) --name $(DEMO_LAB) down

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --all-features -- -D warnings

unit:
	cargo test --workspace

e2e: build
	@set -e; \
	$(LAB) --name $(E2E_LAB) down >/dev/null; \
	trap '$(LAB) --name $(E2E_LAB) down' EXIT; \
	$(LAB) --name $(E2E_LAB) up --base-port $(E2E_PORT) --real-nodes $(REAL_NODES); \
	FERRY_LAB_NAME=$(E2E_LAB) cargo test -p ferry-e2e --features lab --test lab --test tunnel --test peering --test offload --test mcs --test trust --test install

# cargo fuzz needs nightly flags; RUSTC_BOOTSTRAP lets the one stable toolchain here accept them. Its
# sanitizer build gets a target dir of its own, so it never invalidates the main cache. One target per
# thing a peer sends (peering-broker/fuzz/fuzz_targets), each for FUZZ_SECONDS.
FUZZ_TARGETS := wire response offload exports dns admission shadowpod quantity
fuzz:
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	set -eo pipefail; cd peering-broker && for t in $(FUZZ_TARGETS); do \
	  printf 'fuzz %s: ' $$t; \
	  RUSTC_BOOTSTRAP=1 cargo fuzz run --target-dir $(HOME)/.cache/ferry/fuzz-target $$t -- -max_total_time=$(FUZZ_SECONDS) 2>&1 | grep -E '^Done|ERROR|panicked' | tail -n 3; \
	done

test: deps lint unit fuzz e2e
