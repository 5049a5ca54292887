# The two commands: `make up` runs the stack, `make test` runs the tests.
# `make bench` measures the proxy against nginx (needs nginx and wrk; BENCH_ARGS=--quick for a smoke run).
# `make swarm-up` / `make swarm-down` run deploy/stack.yml on a Docker Swarm (README "Docker Swarm").
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: up test bench clean swarm-up swarm-down

$(BIN)/python:
	@echo "==> creating $(VENV) with $$($(PYTHON) --version)"
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@echo "==> installing twotier into $(VENV)"
	$(BIN)/pip install --disable-pip-version-check -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	@echo "==> installing twotier with the dev extra into $(VENV)"
	$(BIN)/pip install --disable-pip-version-check -e '.[dev]'
	@touch $@ $(VENV)/.installed

up: $(VENV)/.installed
	$(BIN)/python -m appserver.stack

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed-dev
	$(BIN)/python -m bench $(BENCH_ARGS)

# The stack's name, the compose files merged for it, the images' registry prefix and tag, their base image.
SWARM_STACK      ?= twotier
SWARM_FILES      ?= deploy/stack.yml
TWOTIER_REGISTRY ?=
TWOTIER_TAG      ?= latest
PYTHON_IMAGE     ?= python:3.12-slim
export TWOTIER_REGISTRY TWOTIER_TAG

# Images built from this working tree (as docker-compose.yml builds them), then
# `docker stack deploy`. The proxy's swarm config is named after a hash of
# deploy/swarm/proxy.toml: configs cannot change, so an edited file is a new
# config and deploying again rolls the proxy onto it.
swarm-up:
	@state=$$(docker info --format '{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}' 2>/dev/null); \
	case "$$state" in \
	  "active true") ;; \
	  "active false") echo "swarm-up: this node is a swarm worker: run make swarm-up on a manager" >&2; exit 1 ;; \
	  inactive*) echo "swarm-up: this Docker engine is not in swarm mode: run 'docker swarm init' first (a one-node swarm)" >&2; exit 1 ;; \
	  " "*|"") echo "swarm-up: no Docker engine answers: start it (or point DOCKER_HOST at one)" >&2; exit 1 ;; \
	  *) echo "swarm-up: the swarm is not usable ($${state% *}): see 'docker info'" >&2; exit 1 ;; \
	esac
	docker build --build-arg PYTHON_IMAGE=$(PYTHON_IMAGE) -f deploy/Dockerfile --target proxy -t $(TWOTIER_REGISTRY)twotier-proxy:$(TWOTIER_TAG) .
	docker build --build-arg PYTHON_IMAGE=$(PYTHON_IMAGE) -f deploy/Dockerfile --target app -t $(TWOTIER_REGISTRY)twotier-app:$(TWOTIER_TAG) .
	TWOTIER_STACK=$(SWARM_STACK) TWOTIER_PROXY_TOML_VERSION=$$(sha256sum deploy/swarm/proxy.toml | cut -c1-12) \
	  docker stack deploy --resolve-image never $(foreach f,$(SWARM_FILES),-c $(f)) $(SWARM_STACK)
	@echo "==> deployed; 'docker stack services $(SWARM_STACK)' shows the replicas starting; then http://127.0.0.1:$${TWOTIER_PORT:-8080}/"

# The services first, the networks once the services' containers are gone (a minute
# at most): removed together, the networks can linger on the node for a minute, and
# a stack deployed meanwhile on the same subnets could not start its tasks.
swarm-down:
	docker stack services -q $(SWARM_STACK) | xargs -r docker service rm
	@for i in $$(seq 60); do \
	  [ -z "$$(docker ps -aq --filter label=com.docker.stack.namespace=$(SWARM_STACK))" ] && break; sleep 1; \
	done
	docker stack rm $(SWARM_STACK)

clean:
	rm -rf $(VENV) build *.egg-info
