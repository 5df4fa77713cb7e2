# rtpai: `make demo` runs a whole local call, `make test` runs the tests,
# `make bench` measures the media path and judges issue 14's targets (docs/performance.md;
# BENCH_ARGS='--quick --baseline a38b145' for ~4 minutes, the same table smaller).
# `make fuzz` sends 1,000,000 mutated ng datagrams through the dispatcher, then 100,000 to a real
# daemon over UDP (docs/security.md); each run is bounded by FUZZ_SECONDS.
# Both create or refresh .venv themselves (it is rebuilt when pyproject.toml changes).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

BENCH_STAMP := $(VENV)/.bench-installed
LOADGEN := bench/build/loadgen
# Ends with issue 14's targets, one table (docs/performance.md, "How to read the table"):
# --baseline: rtpai's CPU per call-second beside a38b145's, back to back (the target is a ratio
# to it), 3 runs of 200 calls each, alternating; after the --calls list, up to 4 more runs
# search for the largest healthy N (--search-runs); rtpai is held to CPU 0 (--rtpai-cpus).
BENCH_ARGS ?= --profile 300 --baseline a38b145 --baseline-reps 3
BENCH_CC ?= gcc

FUZZ_COUNT ?= 1000000
FUZZ_DAEMON_COUNT ?= 100000
FUZZ_SECONDS ?= 1800
FUZZ_SEED ?= 1

ASAN_DIR ?= /tmp/rtpai-asan
ASAN_EXAMPLES ?= 3000

.PHONY: demo test lint venv clean bench fuzz asan

# setup.py and the C sources too: `pip install -e` builds the compiled fast path in place
# (docs/performance.md, round 4), and an edited .c must be rebuilt.
$(STAMP): pyproject.toml setup.py $(wildcard media/_fast*.[ch]) openai_flavor/_fast.c \
		$(wildcard ctl/_fast*.[ch])
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m tests.demo

test: $(STAMP)
	$(PY) -m pytest

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# The C load generator is built here, never committed.
$(LOADGEN): bench/loadgen.c
	mkdir -p bench/build
	$(BENCH_CC) -O2 -Wall -Wextra -o $@ $<

bench: $(BENCH_STAMP) $(LOADGEN)
	$(PY) -m bench.run $(BENCH_ARGS)

fuzz: $(STAMP)
	$(PY) -m tests.fuzz_ng --count $(FUZZ_COUNT) --seconds $(FUZZ_SECONDS) --seed $(FUZZ_SEED)
	$(PY) -m tests.fuzz_ng --daemon --count $(FUZZ_DAEMON_COUNT) --seconds $(FUZZ_SECONDS) \
		--seed $(FUZZ_SEED)

# The compiled fast path under AddressSanitizer and UBSan (docs/performance.md, round 4): the
# tracked files copied to ASAN_DIR, the extensions built there instrumented, and the
# differential and golden tests run against them with ASAN_EXAMPLES examples per property.
asan: $(STAMP)
	rm -rf $(ASAN_DIR) && mkdir -p $(ASAN_DIR)
	git ls-files -z | xargs -0 cp --parents -t $(ASAN_DIR)
	cd $(ASAN_DIR) && RTPAI_CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -O1 -g -fno-omit-frame-pointer" \
		RTPAI_LDFLAGS="-fsanitize=address,undefined" $(abspath $(PY)) setup.py -q build_ext --inplace
	cd $(ASAN_DIR) && LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
		ASAN_OPTIONS=detect_leaks=0 RTPAI_FUZZ_EXAMPLES=$(ASAN_EXAMPLES) $(abspath $(PY)) -m pytest -q \
		-p no:cacheprovider tests/test_fast_rtp.py tests/test_fast_ws.py tests/test_rtp.py tests/test_stream.py \
		tests/test_send_thread.py tests/test_fast_bencode.py tests/test_ng.py tests/test_ng_fuzz.py \
		tests/test_fast_sdp.py tests/test_sdp.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info bench/build build media/*.so openai_flavor/*.so ctl/*.so
