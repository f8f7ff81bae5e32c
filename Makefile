# unixloop -- front door.  Run as root (or with sudo available) on Debian 12.
#
#   make demo    build everything, then race unixloop against asyncio
#   make test    build everything, run every test, end with "N passed, N failed"
#   make bench   build everything, then run bench/run.py
#   make deps    install the Debian packages the build and the tests need
#   make clean   remove build products (make distclean: the venv too)

SHELL := /bin/bash
MAKEFLAGS += --no-print-directory

# Debian's interpreter: the venv must see Debian's pytest and uvloop.  The
# first python3 on PATH may be another interpreter without them.
SYSTEM_PYTHON ?= /usr/bin/python3
VENV    := .venv
PY      := $(VENV)/bin/python
JOBS    ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_RELEASE_TYPE ?= RelWithDebInfo

DEB_PACKAGES := build-essential make cmake clang pkg-config python3-dev \
	python3-venv python3-pytest python3-uvloop python3-setuptools \
	python3-wheel python3-pip libpython3.11-testsuite libuv1-dev \
	libcmocka-dev python3-aiohttp python3-websockets python3-httpx \
	python3-anyio python3-aiosmtpd python3-uvicorn python3-httptools \
	python3-wsproto python3-starlette python3-tornado python3-pytest-mock \
	python3-asyncssh python3-zmq python3-redis redis-server \
	python3-asyncpg postgresql libssl-dev python3-asyncio-mqtt mosquitto

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Everything the Python extension is built from: a change rebuilds it.
PY_INPUTS := setup.py pyproject.toml src/SOURCES \
	$(wildcard src/*.c src/*.h include/*.h python/unixloop/*.c \
	           python/unixloop/*.h python/unixloop/*.py)

.PHONY: all deps build build-c build-asan build-py build-py-asan test demo bench clean distclean

all: build

deps:
	@missing=""; \
	for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q "install ok installed" \
	    || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing$$missing"; \
	  $(SUDO) apt-get update && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y $(DEB_PACKAGES); \
	fi

$(PY): | deps
	$(SYSTEM_PYTHON) -m venv --system-site-packages $(VENV)

build: build-c build-asan build-py

build-c: deps
	@[ -f build/CMakeCache.txt ] || cmake -S . -B build -DCMAKE_BUILD_TYPE=$(CMAKE_RELEASE_TYPE)
	cmake --build build -j $(JOBS)

build-asan: deps
	@[ -f build-asan/CMakeCache.txt ] || cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DUL_SANITIZE=ON
	cmake --build build-asan -j $(JOBS)

build-py: $(VENV)/.installed

# setuptools skips an extension whose sources are not newer than it to the
# second, and so misses an edit made in the second of the last build: make
# has decided, so the old extension goes first.
$(VENV)/.installed: $(PY_INPUTS) | $(PY)
	rm -f build-py/lib*/unixloop/_core*.so
	$(PY) -m pip install --no-build-isolation --no-deps -q .
	@touch $@

# The Python package with ASan/UBSan, for the tests only (scripts/test.sh):
# not installed, it is imported from build-py-asan/lib (PYTHONPATH) by an
# interpreter that preloads the sanitizer runtimes listed in
# build-py-asan/preload (the interpreter itself is not instrumented).
PY_ASAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined \
	-fno-omit-frame-pointer

build-py-asan: build-py-asan/.built

build-py-asan/.built: $(PY_INPUTS) | $(PY)
	rm -f build-py-asan/lib/unixloop/_core*.so
	CFLAGS="$(PY_ASAN_FLAGS)" LDFLAGS="$(PY_ASAN_FLAGS)" $(PY) setup.py -q \
	  build --build-base build-py-asan --build-lib build-py-asan/lib
	echo "$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	  > build-py-asan/preload
	@touch $@

# The builds run as steps of scripts/test.sh, so that a broken build is
# counted as a failure and the run still ends with its summary line.
test: deps
	@MAKE="$(MAKE)" scripts/test.sh

demo: build
	$(PY) examples/demo.py

bench: build
	@if [ -f bench/run.py ]; then $(PY) bench/run.py; else echo "bench/run.py does not exist yet"; fi

clean:
	rm -rf build build-asan build-py build-py-asan $(VENV)/.installed
	find . -name __pycache__ -type d -prune -not -path './.venv/*' -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
