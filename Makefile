# Postamt — the two set-up commands from the README are `make run` and `make test`.
GO ?= go
FUZZTIME ?= 10

.PHONY: run build test deps lint unit e2e interop fuzz bench bench-quick bench-relay bench-checks soak clean

## run: start the server with embedded defaults (SMTP on 127.0.0.1:2525, data in ./postamt-data)
run:
	$(GO) run ./cmd/postamt serve

build:
	$(GO) build -o bin/postamt ./cmd/postamt

## test: everything CI runs — installs the real peers (Postfix, Dovecot, swaks, msmtp) first
test: deps lint unit e2e interop fuzz
	@echo "make test: all suites passed"

deps:
	bash scripts/install-test-deps.sh

lint:
	@test -z "$$(gofmt -l . | tee /dev/stderr)" || (echo "gofmt: files above need formatting" && exit 1)
	$(GO) vet ./...
	$(GO) vet -tags interop ./test/interop/
	$(GO) tool staticcheck ./...

unit:
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /test/e2e)

e2e:
	$(GO) test -count=1 ./test/e2e/

interop:
	$(GO) test -count=1 -tags interop ./test/interop/

fuzz:
	bash scripts/fuzz.sh $(FUZZTIME)

## bench: side-by-side benchmark against Postfix, Mailpit and smtp-sink (see docs/benchmarks.md)
bench:
	bash scripts/bench.sh
	bash scripts/bench-relay.sh
	$(MAKE) bench-checks

## bench-checks: end-of-DATA latency with the built-in checks off and on, same run (issue 6)
bench-checks:
	mkdir -p bench/out
	$(GO) test -run '^$$' -bench BenchmarkChecks -benchtime 1000x ./internal/app/ | tee bench/out/checks.txt

bench-quick:
	bash scripts/bench.sh --quick
	bash scripts/bench-relay.sh --quick

## bench-relay: end-to-end relay through Postamt and Postfix to smtp-sink (issue 4)
bench-relay:
	bash scripts/bench-relay.sh

## soak: the long crash run (20+ kills under load)
soak:
	POSTAMT_CRASH_KILLS=25 POSTAMT_CRASH_SENDERS=32 $(GO) test -count=1 -timeout 30m -run Kill9 -v ./test/e2e/

clean:
	rm -rf bin bench/out postamt-data
