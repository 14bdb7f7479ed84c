# Two commands on a fresh machine: `make demo` and `make test`. Each builds
# the virtualenv it needs first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python

.PHONY: demo test lint protos prometheus-rule model bench load soak serve clean prometheus-tools docker-tools swarm-tools video-tools jpeg-tools

# The service alone (no torch): all that serving and the demo need.
$(VENV)/.service: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

# Training and test tools. torch goes in first, pinned, so that the range in
# pyproject.toml is already satisfied by the CPU build on this machine. Where pip
# would find PyPI's CUDA build instead, point it at torch's CPU wheels:
#   make test TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_PIP_ARGS ?=
$(VENV)/.dev: $(VENV)/.service
	$(PY) -m pip install --quiet $(TORCH_PIP_ARGS) torch==2.13.0
	$(PY) -m pip install --quiet -e '.[train,dev]'
	touch $@

demo: $(VENV)/.service
	$(BIN)/actionstream demo

# Whole test files shared among up to four processes, one a core: most tests wait on
# servers, processes and clocks more than they compute. PYTEST_WORKERS= runs them in one.
PYTEST_WORKERS ?= --numprocesses=auto --maxprocesses=4 --dist=loadfile

test: $(VENV)/.dev prometheus-tools docker-tools swarm-tools video-tools jpeg-tools
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest $(PYTEST_WORKERS)

# Debian's prometheus and promtool, for the real-scrape and alert-rule tests.
# Installed when we are root with apt (as in CI); elsewhere those tests skip.
prometheus-tools:
	@command -v promtool >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	     --no-install-recommends prometheus >/dev/null; } \
	  || echo "prometheus not installed: its tests will be skipped"

# Debian's docker.io (dockerd, docker) and debootstrap, for the image tests,
# which start their own engine and make their own base image. Installed when
# we are root with apt (as in CI); elsewhere those tests skip.
docker-tools:
	@{ command -v dockerd && command -v docker && command -v debootstrap; } >/dev/null \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	     --no-install-recommends docker.io debootstrap >/dev/null; } \
	  || echo "docker.io and debootstrap not installed: the image tests will be skipped"

# g++ and gRPC's C++ files, for bench/load.py's C++ camera swarm (bench/cameras) and
# its test. Installed when we are root with apt (as in CI); elsewhere its test skips
# and the bench falls back to Python cameras.
swarm-tools:
	@{ command -v g++ && command -v pkg-config && command -v grpc_cpp_plugin \
	   && pkg-config --exists grpc++ protobuf; } >/dev/null \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	     --no-install-recommends g++ make pkg-config libgrpc++-dev libprotobuf-dev \
	     protobuf-compiler-grpc >/dev/null; } \
	  || echo "gRPC's C++ files not installed: the C++ camera swarm's test will be skipped"

# Debian's ffmpeg, for the test that makes videos the way users' tools do (H.264 MP4,
# Matroska, audio tracks, variable rates) and cuts them short. Installed when we are
# root with apt (as in CI); elsewhere that test skips.
video-tools:
	@command -v ffmpeg >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	     --no-install-recommends ffmpeg >/dev/null; } \
	  || echo "ffmpeg not installed: the test of videos it makes will be skipped"

# Debian's jpegtran, for the tests of arithmetic-coded JPEGs (which neither OpenCV nor
# Pillow writes). Installed when we are root with apt (as in CI); elsewhere they skip.
jpeg-tools:
	@command -v jpegtran >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	     --no-install-recommends libjpeg-turbo-progs >/dev/null; } \
	  || echo "jpegtran not installed: the tests of arithmetic-coded JPEGs will be skipped"

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Regenerate the gRPC/protobuf stubs; never edit actionstream/v1 by hand.
protos: $(VENV)/.dev
	scripts/gen_protos.sh $(PY) .

# Rewrite the Prometheus Operator's copy of the alert rules after changing
# deploy/prometheus/alerts.yml; never edit deploy/k8s/prometheus-operator/prometheusrule.yaml.
prometheus-rule: $(VENV)/.dev
	$(PY) scripts/gen_prometheus_rule.py

# Reproduce the bundled default model: TrainConfig's defaults with the frame
# shown beside its difference (--appearance), 12 epochs, seed 0.
model: $(VENV)/.dev
	rm -rf runs/default  # train refuses to start over an earlier run
	$(BIN)/actionstream train --out runs/default --seed 0 --appearance --epochs 12
	$(BIN)/actionstream export runs/default --out service/models/default.onnx
	$(BIN)/actionstream evaluate runs/default

bench: $(VENV)/.dev
	$(PY) bench/step_latency.py
	$(PY) bench/serve_throughput.py
	$(PY) bench/png_decode.py

# Live cameras against the server, one process then two (minutes; a quiet machine).
load: $(VENV)/.dev swarm-tools
	$(PY) bench/load.py --plot docs/load.png
	$(PY) bench/load.py --server-arg=--workers --server-arg=2

# One server and 60 cameras for 20 minutes: does memory, a descriptor or latency grow?
soak: $(VENV)/.dev swarm-tools
	$(PY) bench/soak.py

serve: $(VENV)/.service
	$(BIN)/actionstream serve

clean:
	rm -rf $(VENV) build runs .pytest_cache .mypy_cache .ruff_cache
