# callbackd — make help lists the targets.
#   make test                      all tests, race detector on
#   make test T=TestName PKG=./dispatcher/...
#   make fuzz FUZZTIME=30s         every fuzz target in turn
#   make bench                     end-to-end benchmark, floor vs callbackd (bench/README.md)
#   make bench BENCHFLAGS=-quick   the same, small (about a minute)
#   make run                       callbackd serve on its embedded defaults

GO          ?= go
PKG         ?= ./...
T           ?=
FUZZTIME    ?= 20s
BENCHFLAGS  ?=
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS     := -X main.version=$(VERSION)
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# protoc-gen-go and protoc-gen-go-grpc are pinned in plugins/proto/buf.gen.yaml.
BUF         := github.com/bufbuild/buf/cmd/buf@v1.75.0

.PHONY: help build run test test-short lint fmt fuzz bench bench-go proto
help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

build: ## build bin/callbackd
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/callbackd ./cmd/callbackd

run: ## run callbackd serve with the embedded NATS server
	$(GO) run -ldflags '$(LDFLAGS)' ./cmd/callbackd serve

test: ## run the tests with the race detector
	$(GO) test -race -count=1 -timeout 15m $(if $(T),-run '$(T)') $(PKG)

test-short: ## run the quick tests without the race detector
	$(GO) test -short -count=1 $(if $(T),-run '$(T)') $(PKG)

lint: ## gofmt, go vet, staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

fmt: ## gofmt every file
	gofmt -w $$(git ls-files '*.go')

fuzz: ## run every fuzz target for FUZZTIME each
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

bench: ## end-to-end benchmark: floor vs callbackd, results in bench/results (BENCHFLAGS=-quick for a small run)
	$(GO) run ./bench -readme bench/README.md $(BENCHFLAGS)

bench-go: ## run the Go benchmarks (go test -bench)
	$(GO) test -run '^$$' -bench . -benchmem $(PKG)

proto: ## regenerate plugins/pluginpb from plugins/proto (buf and the protoc plugins via go run)
	cd plugins/proto && $(GO) run $(BUF) lint && $(GO) run $(BUF) generate

GQLGEN      := github.com/99designs/gqlgen@v0.17.98

.PHONY: gqlgen
gqlgen: ## regenerate api/internal/gql from api/schema.graphql (commit the result)
	cd api && $(GO) run $(GQLGEN) generate
