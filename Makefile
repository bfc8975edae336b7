# tcpshadow — run `make help` for the targets.
export PATH := /usr/local/go/bin:$(PATH)
GO      ?= go
PREFIX  ?= /usr/local
DESTDIR ?=
BINDIR  ?= $(PREFIX)/bin
# systemd (252) reads system units from /etc/systemd/system (the
# administrator's), /usr/local/lib/systemd/system and /usr/lib/systemd/system:
# $(PREFIX)/lib/systemd/system is the right one for PREFIX /usr/local or /usr.
# For any other PREFIX, set UNITDIR=/etc/systemd/system.
UNITDIR ?= $(PREFIX)/lib/systemd/system
# systemd-sysctl reads /etc/sysctl.d, /usr/local/lib/sysctl.d and
# /usr/lib/sysctl.d: likewise, SYSCTLDIR=/etc/sysctl.d for another PREFIX.
SYSCTLDIR ?= $(PREFIX)/lib/sysctl.d
SYSCTL  := scripts/sysctl.d/60-tcpshadow.conf
# The units' sources name the default binary path; install rewrites it.
UNITS   := $(wildcard scripts/systemd/*.service)
EXAMPLE := scripts/tcpshadow.example.toml
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
BIN     := bin/tcpshadow
LDFLAGS := -s -w -X main.version=$(VERSION)
# Packages whose tests need no root and no lab; the others build labs.
UNIT    := $(shell $(GO) list ./... 2>/dev/null | grep -v -e /internal/e2e -e /internal/lab -e /internal/rawsock -e /internal/linksock -e /internal/cmd/tslab)
LAB     := ./internal/lab ./internal/rawsock ./internal/linksock ./internal/cmd/tslab ./internal/e2e

.PHONY: help deps build test test-unit test-e2e lint demo bench bench-go bench-smoke bench-go-smoke clean install uninstall fuzz fuzz-smoke

help: ## show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z0-9-]*:.*## / {printf "  %-15s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

deps: ## install what is missing (Debian packages; needs root)
	@./scripts/deps.sh

build: ## build bin/tcpshadow
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/tcpshadow

test: deps lint test-unit fuzz-smoke test-e2e bench-go-smoke ## install what is missing, then run every test (as root)

test-unit: ## unit tests with the race detector, then the memory ones without it (it pads allocations)
	$(GO) test -race -count=1 $(UNIT)
	$(GO) test -count=1 -run 'Alloc|Memory' $(UNIT)

test-e2e: ## lab tests: sealed namespaces, real servers, the demo and a bench step (needs root)
	$(GO) test -p 1 -count=1 -timeout 30m $(LAB)

lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

demo: deps build ## run the copier on a built-in lab and show what prod and shadow served
	$(GO) run ./internal/cmd/tslab demo --bin $(BIN)

bench-go: ## microbenchmarks of the datapath
	$(GO) test -run '^$$' -bench . -benchmem $(UNIT)

# TCPCOPY_DIR: a build of the C tool (README, "Against the C tool"); when
# set, the bench runs its steps beside tcpshadow's.
TCPCOPY_DIR ?=
bench: deps build bench-go ## microbenchmarks, then the lab benchmark (writes BENCHMARKS.md; TCPCOPY_DIR=dir adds the C tool)
	$(GO) run ./internal/cmd/tslab bench --bin $(BIN) --out BENCHMARKS.md --tcpcopy-dir '$(TCPCOPY_DIR)'

bench-smoke: build bench-go-smoke ## every microbenchmark once, then one short lab step per shape (stdout only)
	$(GO) run ./internal/cmd/tslab bench --smoke --bin $(BIN)

bench-go-smoke: ## every microbenchmark once (so that CI runs them; its lab step is TestBenchSmoke)
	$(GO) test -run '^$$' -bench . -benchtime=1x $(UNIT)

# package:FuzzTarget, each run for FUZZTIME by `make fuzz`; their seed
# corpora run as plain tests in test-unit.
FUZZ     := ./intercept:FuzzHandshake ./intercept:FuzzAgentPeer ./intercept:FuzzClientStream \
            ./intercept:FuzzRelayHeader ./intercept:FuzzH2Relay ./capture:FuzzLinkHeaderLen ./capture:FuzzMirrorHandle ./capture:FuzzParseFrame ./intercept/wire:FuzzReader ./intercept/wire:FuzzParse \
            ./rewrite:FuzzDecode ./rewrite:FuzzParseOptions ./tcpstate:FuzzWorker \
            ./internal/compare:FuzzClassify ./internal/compare:FuzzClassifyPair ./internal/compare:FuzzDetect \
            ./internal/compare:FuzzSummarize ./internal/compare:FuzzReportJSON ./internal/compare:FuzzH2Walk ./internal/compare:FuzzH2Record \
            ./intercept/divert:FuzzParsePacket ./intercept/tunnel:FuzzOpen ./internal/tunnelsock:FuzzReceive
FUZZ     += ./internal/pcapfile:FuzzReader ./cmd/tcpshadow:FuzzParseMapsAndShare
FUZZTIME ?= 30s

fuzz: ## run every fuzz target for FUZZTIME (30s) each
	@set -e; for f in $(FUZZ); do \
		pkg=$${f%%:*}; name=$${f##*:}; \
		echo "fuzz $$pkg $$name for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) $$pkg; \
	done

fuzz-smoke: ## every fuzz target for 3000 inputs (a count, not a time: a time can expire mid-minimization and fail), as CI runs them
	@$(MAKE) --no-print-directory fuzz FUZZTIME=3000x

clean: ## remove build output
	rm -rf bin

# The units get ExecStart=$(BINDIR)/tcpshadow; the example config is installed
# beside the configuration, never over it.
install: build ## install the binary, the systemd units and the example config (PREFIX, DESTDIR)
	install -D -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/tcpshadow
	install -d -m 0755 $(DESTDIR)$(UNITDIR)
	@set -e; for u in $(UNITS); do \
		dst=$(DESTDIR)$(UNITDIR)/$${u##*/}; \
		echo "sed $$u > $$dst"; \
		sed 's|/usr/local/bin/tcpshadow|$(BINDIR)/tcpshadow|g' $$u > $$dst.tmp; \
		chmod 0644 $$dst.tmp; mv -f $$dst.tmp $$dst; \
	done
	install -D -m 0644 $(SYSCTL) $(DESTDIR)$(SYSCTLDIR)/$(notdir $(SYSCTL))
	@if [ -f $(EXAMPLE) ]; then \
		echo "install $(EXAMPLE) $(DESTDIR)/etc/tcpshadow/tcpshadow.toml.example"; \
		install -D -m 0644 $(EXAMPLE) $(DESTDIR)/etc/tcpshadow/tcpshadow.toml.example; \
	fi
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "next: /etc/tcpshadow/tcpshadow.toml, the secret in /etc/tcpshadow/secret (mode 0600), your hosts in"
	@echo "      IPAddressAllow= (systemctl edit), sysctl --system (prod host), then"
	@echo "      systemctl enable --now tcpshadow-intercept (assist host) or tcpshadow-copy (prod host)"

uninstall: ## remove what install installed (configuration and secret stay)
	rm -f $(DESTDIR)$(BINDIR)/tcpshadow $(DESTDIR)/etc/tcpshadow/tcpshadow.toml.example
	rm -f $(addprefix $(DESTDIR)$(UNITDIR)/,$(notdir $(UNITS)))
	rm -f $(DESTDIR)$(SYSCTLDIR)/$(notdir $(SYSCTL))
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
