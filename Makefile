# CES developer entry points. Both targets install what is missing first (scripts/deps.sh) and say so.
SHELL := /bin/bash
.DEFAULT_GOAL := help

.PHONY: help up test deps lint clean

help:
	@echo "make up    - start broker, Redis, ingest, two edges and HAProxy on this machine (Ctrl-C stops)"
	@echo "make test  - run the whole test suite against real redis-server and tansu processes"
	@echo "make lint  - rustfmt and clippy, as CI runs them"

up:
	@scripts/up.sh

deps:
	@scripts/deps.sh --test

test: deps
	@echo "[test] cargo nextest run --workspace"
	@PATH="$$HOME/.cargo/bin:$$PATH" cargo nextest run --workspace --locked

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

clean:
	rm -rf .ces
