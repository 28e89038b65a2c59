# CES developer entry points. Both targets install what is missing first (scripts/deps.sh) and say so.
SHELL := /bin/bash
.DEFAULT_GOAL := help

.PHONY: help up test bench deps lint fuzz clean

help:
	@echo "make up    - start broker, Redis, ingest, two edges, HAProxy and Prometheus on this machine (Ctrl-C stops);"
	@echo "             make up REDIS=cluster runs a Redis Cluster (3 primaries, 3 replicas on 7001-7006) instead of one Redis"
	@echo "make test  - run the whole test suite against real redis-server processes and one Apache Kafka broker"
	@echo "make bench - run the standard load tests, each on a fresh stack of its own (results in loadtest/out/)"
	@echo "make lint  - rustfmt, clippy and cargo machete (unused dependencies), as CI runs them"
	@echo "make fuzz  - fuzz the record validator for FUZZ_SECONDS (60) with cargo fuzz (needs the nightly toolchain)"

# REDIS=single (one redis-server on 6379) or cluster (a Redis Cluster on 7001-7006); the environment's REDIS is
# used when the command line gives none.
REDIS ?= single
up:
	@REDIS=$(REDIS) scripts/up.sh

bench:
	@scripts/bench.sh

deps:
	@scripts/deps.sh --test

test: deps
	@echo "[test] promtool check rules / test rules deploy/prometheus/alerts.yml"
	@promtool check rules deploy/prometheus/alerts.yml
	@cd deploy/prometheus && promtool test rules alerts_test.yml
	@echo "[test] scripts/check-protocol-deps.sh: ces-protocol stays free of runtime and I/O crates"
	@scripts/check-protocol-deps.sh
	@if scripts/check-protocol-deps.sh ces-runtime >/dev/null 2>&1; then \
		echo "[test] scripts/check-protocol-deps.sh no longer detects tokio in ces-runtime; the check is broken" >&2; exit 1; fi
	@echo "[test] scripts/check-file-size.sh: no source file over 500 lines of non-test code without a reason"
	@scripts/check-file-size.sh >/dev/null
	@echo "[test] scripts/check-deploy.sh: Dockerfile, docker-compose.yml, helm/ and k8s/ lint and validate offline"
	@scripts/check-deploy.sh
	@echo "[test] clients/js: build, unit tests, browser bundle size, npm pack and a consumer's import (npm run ci)"
	@cd clients/js && npm run --silent ci
	@scripts/test.sh
	@echo "[test] scripts/test-up-stop.sh: SIGINT to make up's process group stops everything"
	@scripts/test-up-stop.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	@cargo machete --version >/dev/null 2>&1 || { echo "[lint] installing cargo-machete"; cargo install --locked cargo-machete; }
	cargo machete

FUZZ_SECONDS ?= 60
# The corpus grows with every run; CI keeps it outside the clone so each run starts where the last one stopped.
FUZZ_CORPUS ?= fuzz/corpus/validate_record
fuzz:
	@command -v cargo-fuzz >/dev/null || { echo "[fuzz] installing cargo-fuzz"; cargo install cargo-fuzz --locked; }
	@mkdir -p "$(FUZZ_CORPUS)" && for seed in fuzz/seeds/validate_record/*; do \
		[ -e "$(FUZZ_CORPUS)/$${seed##*/}" ] || cp "$$seed" "$(FUZZ_CORPUS)/"; done
	@echo "[fuzz] cargo +nightly fuzz run validate_record for $(FUZZ_SECONDS) s (corpus: $(FUZZ_CORPUS))"
	@corpus=$$(cd "$(FUZZ_CORPUS)" && pwd) && cd fuzz && \
		cargo +nightly fuzz run validate_record "$$corpus" -- -max_total_time=$(FUZZ_SECONDS)

clean:
	rm -rf .ces
