# handoff — zero-downtime reloads for network servers.
#   make run      build a first release and serve it on 127.0.0.1:8080 (foreground)
#   make deploy   build a new release, swap the `current` link, reload; roll back on failure
#   make test     vet + race tests, integration tests included (what CI runs)

GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)
LISTEN    ?= 127.0.0.1:8080
PIDFILE   ?= run/hello.pid
DEPLOYDIR ?= deploy
KEEP      ?= 5

.PHONY: all build run deploy rollback releases test test-short lint bench soak fuzz clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/ ./cmd/handoff ./examples/hello ./examples/echo

# The main job: the example server from the `current` release, in the foreground.
run: build
	@scripts/release.sh install "$(VERSION)"
	exec $(DEPLOYDIR)/current/hello --listen $(LISTEN) --pidfile $(PIDFILE)

# A new release while `make run` serves: VERSION defaults to a fresh stamp.
deploy: VERSION := $(if $(filter command line environment,$(origin VERSION)),$(VERSION),$(shell git describe --tags --always --dirty 2>/dev/null || echo dev)-$(shell date -u +%Y%m%d%H%M%S%N | cut -c1-17))
deploy: build
	@scripts/release.sh deploy "$(VERSION)"

rollback: build
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

bench:
	$(GO) test -tags integration -run '^$$' -bench . -benchtime 1x ./integration/

soak:
	HANDOFF_SOAK=100 $(GO) test -tags integration -count=1 -timeout 30m -run TestSoak -v ./integration/

# The parsers of what a client or a file may say; their seed corpora run in `make test`.
FUZZTIME ?= 60s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParseRequest$$' -fuzztime $(FUZZTIME) ./internal/control/
	$(GO) test -run '^$$' -fuzz '^FuzzParsePIDs$$' -fuzztime $(FUZZTIME) ./upgrader/

clean:
	rm -rf bin run $(DEPLOYDIR)
