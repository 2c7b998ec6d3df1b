# Tether: `make run` starts a node; `make test` installs what the tests need
# (Debian packages, npm packages) and runs every test. CI runs `make test`.

GO ?= go
export CGO_ENABLED ?= 1

.PHONY: run test deps lint gotest jstest e2e fuzz bench build dist

run:
	$(GO) run ./cmd/tether

build:
	$(GO) build -ldflags "-X main.commit=$$(git rev-parse --short=12 HEAD 2>/dev/null)" -o bin/tether ./cmd/tether

# Release binaries for linux, darwin and windows on amd64 and arm64, with
# SHA256SUMS, in dist/ (VERSION=v1.2.3 make dist; scripts/dist.sh).
dist:
	./scripts/dist.sh

test: deps lint gotest jstest e2e
	@echo; cat artifacts/fault-counts.txt

deps:
	./scripts/test-deps.sh

lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...

# e2e/faults writes artifacts/fault-counts.txt: the fault-injection
# suite's counts, printed at the end of `make test`.
gotest:
	rm -f artifacts/fault-counts.txt
	$(GO) test -race -count=1 ./...

jstest:
	npm run --silent test:unit

e2e: build
	TETHER_BIN=$(CURDIR)/bin/tether npm run --silent test:e2e

# Fuzz the decoder, the envelope encoder and the frame header parser for
# longer than the seed corpus run in gotest.
fuzz:
	$(GO) test -run XXX -fuzz '^FuzzDecode$$' -fuzztime 60s ./protocol
	$(GO) test -run XXX -fuzz FuzzEnvelope -fuzztime 30s ./protocol
	$(GO) test -run XXX -fuzz FuzzDecodeFastPath -fuzztime 60s ./protocol
	$(GO) test -run XXX -fuzz FuzzParseFrameHeader -fuzztime 30s ./internal/ws
	$(GO) test -run XXX -fuzz FuzzReader -fuzztime 60s ./internal/ws
	$(GO) test -run XXX -fuzz FuzzQuery -fuzztime 30s ./server

bench:
	$(GO) test -run XXX -bench . -benchmem ./...
