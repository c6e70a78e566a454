# handoff — zero-downtime reloads for network servers.
#   make run      build a first release and serve it on 127.0.0.1:8080 (foreground)
#   make deploy   build a new release, swap the `current` link, reload; roll back on failure
#   make rollback point `current` at the release before the serving one, reload
#   make releases list the releases, the serving one marked
#   make test     vet + race tests, integration tests included (what CI runs)
#   make bench    handoff beside tableflip, Node.js cluster and nginx; report in bench/results/

GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS    = -X main.version=$(VERSION)
LISTEN    ?= 127.0.0.1:8080
PIDFILE   ?= run/hello.pid
DEPLOYDIR ?= deploy
KEEP      ?= 5
export DEPLOYDIR PIDFILE KEEP

.PHONY: all build run deploy deploy-check rollback releases test test-short lint bench soak fuzz clean

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
	$(GO) test -race -tags integration -count=1 -timeout 15m ./...

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
	$(GO) test -run '^$$' -fuzz '^FuzzParseRequest$$' -fuzztime $(FUZZTIME) ./internal/control/
	$(GO) test -run '^$$' -fuzz '^FuzzParsePIDs$$' -fuzztime $(FUZZTIME) ./upgrader/
	$(GO) test -run '^$$' -fuzz '^FuzzHTTPDrainEdge$$' -fuzztime $(FUZZTIME) ./upgrader/

clean:
	rm -rf bin run $(DEPLOYDIR)
