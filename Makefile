# Berth developer targets. `make test` is the test command CI runs (see README.md).
SHELL := bash
GO ?= go
BIN ?= bin
# Daemons are the top-level folders with a main.go; each builds to bin/<name>.
CMDS := $(patsubst %/main.go,%,$(wildcard */main.go))
# Packages whose golden files `make golden` regenerates (those with an -update flag).
GOLDEN_PKGS = $(sort $(dir $(shell grep -rl --include='*_test.go' 'flag.Bool("update"' .)))
FUZZTIME ?= 30s
TEST_TIMEOUT ?= 30m

.PHONY: all build test vet lint unit e2e golden bench fuzz clean demo demo-down compose-config

all: build

build:
	$(GO) build ./...
	@mkdir -p $(BIN)
	@for c in $(CMDS) internal/testrig/demoapp; do \
		echo "build $(BIN)/$$(basename $$c)"; \
		CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/$$(basename $$c) ./$$c || exit 1; \
	done

# test: what CI runs. Static checks first (cheap), then every test with the
# race detector, including the fuzz seed corpora, then the full-stack tests. With CI=true a missing
# nginx, PostgreSQL or Docker fails the run instead of skipping.
test: vet lint unit e2e

vet:
	$(GO) vet ./...

lint:
	$(GO) tool staticcheck ./...

unit:
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $$($(GO) list ./... | grep -v '/e2e$$')

# e2e: the full-stack tests, alone on the machine (they measure failed
# requests under load, and share no CPU with the unit tests), verbose so
# that the per-scenario request and error counts are in the output.
e2e:
	$(GO) test -count=1 -v -timeout $(TEST_TIMEOUT) ./e2e/

golden:
	$(GO) test -count=1 $(addprefix ./,$(GOLDEN_PKGS)) -update

# bench runs the Go micro-benchmarks, then each program in bench/, which
# prints its figures as ratios against a floor measured in the same run.
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...
	@for b in $(sort $(dir $(wildcard bench/*/main.go))); do echo "== $$b"; $(GO) run ./$$b || exit 1; done

# fuzz runs every Fuzz target for FUZZTIME each (go test fuzzes one target at a time).
fuzz:
	@grep -rl --include='*_test.go' '^func Fuzz' . | while read -r f; do \
		pkg=$$(dirname $$f); \
		for t in $$(grep -o '^func Fuzz[A-Za-z0-9_]*' $$f | cut -d' ' -f2); do \
			echo "fuzz $$pkg $$t for $(FUZZTIME)"; \
			$(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
		done; \
	done

# demo runs Berth end to end on this machine (README's first command):
# Postgres, the scheduler with embedded NATS, healthd, lbagent with nginx on
# 127.0.0.1:8080 and a 3-replica demo app. Ctrl-C or `make demo-down` stops it.
demo:
	@bash scripts/demo.sh up

demo-down:
	@bash scripts/demo.sh down

# compose-config checks the production-like compose stack (compose/).
compose-config:
	cd compose && docker-compose config -q

clean:
	rm -rf $(BIN)
