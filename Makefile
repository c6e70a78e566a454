# handoff — zero-downtime reloads for network servers.
#   make run      build a first release and serve it on 127.0.0.1:8080 (foreground)
#   make deploy   build a new release, swap the `current` link, reload; roll back on failure
#   make rollback point `current` at the release before the serving one, reload
#   make releases list the releases, the serving one marked
#   make test     vet + race tests, integration tests included (what CI runs)
#   make bench    handoff beside tableflip, Node.js cluster and nginx; report in bench/results/
#   make mutate   mutation testing of package upgrader against its unit tests; report in docs/mutation/

GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS    = -X main.version=$(VERSION)
LISTEN    ?= 127.0.0.1:8080
PIDFILE   ?= run/hello.pid
DEPLOYDIR ?= deploy
KEEP      ?= 5
export DEPLOYDIR PIDFILE KEEP

.PHONY: all build run deploy deploy-check rollback releases test test-short lint bench soak fuzz mutate clean

all: build

build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/ ./cmd/handoff ./examples/hello ./examples/echo

# The main job: the example server from the `current` release, in the foreground.
run: build
	@scripts/release.sh install "$(VERSION)"
	@scripts/release.sh run --listen $(LISTEN)

# A new release while `make run` serves: VERSION defaults to a fresh stamp.
deploy: VERSION := $(if $(filter command line environment,$(origin VERSION)),$(VERSION),$(shell git describe --tags --always --dirty 2>/dev/null || echo dev)-$(shell date -u +%Y%m%d%H%M%S%N | cut -c1-17))
deploy: deploy-check build
	@scripts/release.sh deploy "$(VERSION)"

deploy-check:
	@scripts/release.sh check "$(VERSION)"

# No build: a rollback must work when the tree does not build.
rollback:
	@scripts/release.sh rollback

releases:
	@scripts/release.sh list

test:
	$(GO) vet ./...
	$(GO) test -race -tags integration -count=1 -timeout 30m ./...

test-short:
	$(GO) test -race -short ./...

lint:
	@test -z "$$(gofmt -l .)" || { gofmt -l .; exit 1; }
	$(GO) vet ./...
	GOOS=darwin $(GO) vet ./...
	GOOS=windows $(GO) build ./...

# Every contender side by side under the seed's load, about 10 minutes;
# the report goes to bench/results/ (BENCHFLAGS: see go run ./bench -h).
bench:
	@scripts/bench-tools.sh
	$(GO) run ./bench $(BENCHFLAGS)

soak:
	HANDOFF_SOAK=100 $(GO) test -tags integration -count=1 -timeout 30m -run TestSoak -v ./integration/

# The parsers of what a client or a file may say, and the HTTP drain's edge
# (partial and pipelined requests around its start); their seed corpora run in `make test`.
FUZZTIME ?= 60s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParseRequest$$' -fuzztime $(FUZZTIME) ./control/
	$(GO) test -run '^$$' -fuzz '^FuzzParsePIDs$$' -fuzztime $(FUZZTIME) ./pidfile/
	$(GO) test -run '^$$' -fuzz '^FuzzHTTPDrainEdge$$' -fuzztime $(FUZZTIME) ./upgrader/

# Mutation testing (gremlins) of the drain, the handover, probation and the
# supervisors, against the unit tests of ./upgrader (not the integration
# suite); docs/testing.md explains the report. GOFLAGS=-count=1 makes
# gremlins time its coverage run for real, not from the test cache: that
# time times MUTATE_COEFFICIENT bounds each mutant's test run (a mutant that
# makes a test hang is TIMED OUT); MUTATE_TIMEOUT bounds the whole run (45 to
# 80 minutes on 2 busy cores). MUTATE_FLAGS adds gremlins flags, e.g.
# --exclude-files 'stderr\.go' to run a part. Report: docs/mutation/upgrader.txt,
# one line a mutant (sorted by position) and the counts, computed from those
# lines even if the run was cut short.
GREMLINS_VERSION   ?= v0.6.0
GREMLINS           ?= $(shell $(GO) env GOPATH)/bin/gremlins
MUTATE_OUT         ?= docs/mutation
MUTATE_COEFFICIENT ?= 30
MUTATE_TIMEOUT     ?= 90m
MUTATE_FLAGS       ?=
MUTANT_LINE         = ^ *(KILLED|LIVED|TIMED OUT|NOT COVERED|NOT VIABLE|SKIPPED) 
mutate:
	@$(GO) version -m $(GREMLINS) 2>/dev/null | grep -q 'go-gremlins/gremlins[[:space:]]*$(GREMLINS_VERSION)' || \
		$(GO) install github.com/go-gremlins/gremlins/cmd/gremlins@$(GREMLINS_VERSION)
	@mkdir -p $(MUTATE_OUT)
	@start=$$(date +%s); \
	GOFLAGS=-count=1 timeout $(MUTATE_TIMEOUT) $(GREMLINS) unleash --invert-logical \
		--timeout-coefficient $(MUTATE_COEFFICIENT) $(MUTATE_FLAGS) ./upgrader > $(MUTATE_OUT)/upgrader.log 2>&1; \
	rc=$$?; \
	{ echo "# make mutate: gremlins $(GREMLINS_VERSION) --invert-logical --timeout-coefficient $(MUTATE_COEFFICIENT) $(MUTATE_FLAGS) ./upgrader"; \
	  echo "# $$(date -u '+%Y-%m-%d %H:%M UTC'), commit $$(git rev-parse --short HEAD), wall $$(( $$(date +%s) - start )) s, exit $$rc"; \
	  grep -E '$(MUTANT_LINE)' $(MUTATE_OUT)/upgrader.log | awk '{print $$NF "\t" $$0}' | sort -V | cut -f2- | \
		awk '{print} / KILLED /{k++} / LIVED /{l++} / TIMED OUT /{t++} / NOT COVERED /{n++} \
		END {printf "\nkilled %d, lived %d, timed out %d, not covered %d\n", k, l, t, n; \
		if (k+l) printf "test efficacy %.2f%% (killed / (killed + lived)), mutant coverage %.2f%% ((killed + lived) / (killed + lived + not covered))\n", 100*k/(k+l), 100*(k+l)/(k+l+n)}'; \
	} > $(MUTATE_OUT)/upgrader.txt; \
	rm $(MUTATE_OUT)/upgrader.log; \
	tail -2 $(MUTATE_OUT)/upgrader.txt; grep -E '^ *LIVED' $(MUTATE_OUT)/upgrader.txt || true

clean:
	rm -rf bin run $(DEPLOYDIR)
