# Berth developer targets. `make test` is the test command CI runs (see README.md).
SHELL := bash
GO ?= go
BIN ?= bin
# Daemons are the top-level folders with a main.go; each builds to bin/<name>.
CMDS := $(patsubst %/main.go,%,$(wildcard */main.go))
# Packages whose golden files `make golden` regenerates (those with an -update flag).
GOLDEN_PKGS = $(sort $(dir $(shell grep -rl --include='*_test.go' 'flag.Bool("update"' .)))
FUZZTIME ?= 30s
PROMTOOL ?= promtool
TEST_TIMEOUT ?= 30m

.PHONY: all build test checks vet lint rules unit e2e golden bench fuzz clean demo demo-down screenshots compose-config

all: build

build:
	$(GO) build ./...
	@mkdir -p $(BIN)
	@for c in $(CMDS) internal/testrig/demoapp; do \
		echo "build $(BIN)/$$(basename $$c)"; \
		CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/$$(basename $$c) ./$$c || exit 1; \
	done

# test: what CI runs. The full-stack tests (e2e) and the checks (vet,
# staticcheck, then every other package's tests with the race detector,
# fuzz seed corpora included) run side by side: e2e mostly waits on
# wall-clock events (rollouts, health checks, elections, an ACME renewal),
# and every test must hold on a loaded machine anyway (no test may flake
# beside a CPU hog). Their output is not synchronised, so that e2e's
# progress shows as it happens: go test writes whole lines, which
# interleave. With CI=true a missing nginx, PostgreSQL, Docker or Chromium fails the
# run instead of skipping.
test:
	@$(MAKE) --no-print-directory -j2 --output-sync=none e2e checks

# checks: the static checks (cheap, first), then the unit tests.
checks:
	@$(MAKE) --no-print-directory vet
	@$(MAKE) --no-print-directory lint
	@$(MAKE) --no-print-directory rules
	@$(MAKE) --no-print-directory unit

vet:
	$(GO) vet ./...

lint:
	$(GO) tool staticcheck ./...

unit:
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $$($(GO) list ./... | grep -v '/e2e$$')

# rules: promtool checks the Prometheus alerting rules (deploy/prometheus)
# and runs their unit tests, and checks the compose stack's prometheus.yml. Without promtool (Debian's prometheus package)
# it skips, but with CI=true it fails. That every metric they name exists is
# a Go test (deploy/), run by unit.
rules:
	@if ! command -v $(PROMTOOL) >/dev/null 2>&1; then \
		if [ "$$CI" = true ]; then echo "rules: promtool not found (CI=true): apt-get install prometheus" >&2; exit 1; fi; \
		echo "rules: promtool not found, skipped: apt-get install prometheus"; exit 0; \
	fi; \
	$(PROMTOOL) check rules deploy/prometheus/alerts.yml && \
	$(PROMTOOL) test rules deploy/prometheus/alerts_test.yml && \
	$(PROMTOOL) check config --syntax-only compose/prometheus/prometheus.yml

# e2e: the full-stack tests, verbose, so that the per-scenario request
# and error counts are in the output. Their serial tests load the machine
# one at a time; those that mostly wait run together after them.
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

# screenshots takes docs/console/*.png from the running demo (make demo
# first): the console's browser test (e2e TestConsoleInABrowser) signs in
# to CONSOLE_URL with the demo's read token, visits each page and writes
# what it captured (1280 wide, the whole page). Needs chromium.
CONSOLE_URL ?= http://127.0.0.1:7070
CONSOLE_TOKEN_FILE ?= /tmp/berth-demo/run/console.token
screenshots:
	@test -r $(CONSOLE_TOKEN_FILE) || { echo "screenshots: no $(CONSOLE_TOKEN_FILE): run make demo first" >&2; exit 1; }
	BERTH_CONSOLE_URL=$(CONSOLE_URL) BERTH_CONSOLE_TOKEN_FILE=$(CONSOLE_TOKEN_FILE) BERTH_SCREENSHOTS=$(CURDIR)/docs/console \
		$(GO) test -count=1 -v -run '^TestConsoleInABrowser$$' ./e2e/

# compose-config checks the production-like compose stack (compose/).
compose-config:
	cd compose && docker-compose config -q

clean:
	rm -rf $(BIN)
