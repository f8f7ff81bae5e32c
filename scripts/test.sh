#!/usr/bin/env bash
# Builds (make build-c, build-asan, build-py, build-py-asan), runs every
# test step, keeps going when one fails, and ends with one line "N passed,
# N failed".  Exit status 1 if anything failed.
#
# Counting: ctest and pytest contribute their own test counts; every other
# step (each build, each example, the conformance check) counts as one test.
# Tests that need a build that failed are skipped (the build counts as failed).  A step that fails
# without reporting a failing test (crash, timeout, build error) counts as
# one failure.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
MAKE=${MAKE:-make}
passed=0
failed=0
failed_steps=()
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# run NAME TIMEOUT CMD...: runs CMD with its output shown and kept in $log;
# sets $rc.
run() {
  local name=$1 limit=$2
  shift 2
  echo
  echo "=== $name"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    echo "=== $name: timed out after $limit"
  fi
}

count() { # count NAME NPASS NFAIL
  passed=$((passed + $2))
  failed=$((failed + $3))
  if [ "$3" -gt 0 ]; then failed_steps+=("$1"); fi
}

ctest_step() { # ctest_step BUILD_DIR BACKEND
  local name="ctest $1 UNIXLOOP_BACKEND=$2" total nfail line
  if [ ! -d "$1" ]; then count "$name (no build dir)" 0 1; return; fi
  run "$name" 1800 env UNIXLOOP_BACKEND="$2" \
    ctest --test-dir "$1" --output-on-failure --timeout 300 -j "$(nproc)"
  # "100% tests passed, 0 tests failed out of 12"
  line=$(grep -E 'tests passed, [0-9]+ tests? failed out of [0-9]+' "$log" | tail -n 1)
  if [ -n "$line" ]; then
    total=$(sed -E 's/.*out of ([0-9]+).*/\1/' <<<"$line")
    nfail=$(sed -E 's/.*, ([0-9]+) tests? failed.*/\1/' <<<"$line")
    if [ "$rc" != 0 ] && [ "$nfail" = 0 ]; then nfail=1; fi
    count "$name" $((total - nfail)) "$nfail"
  elif grep -q 'No tests were found' "$log" && [ "$rc" = 0 ]; then
    echo "=== $name: no tests registered yet"
  else
    count "$name" 0 $(( rc == 0 ? 0 : 1 ))
  fi
}

simple_step() { # simple_step NAME TIMEOUT CMD...
  run "$@"
  if [ "$rc" = 0 ]; then count "$1" 1 0; else count "$1" 0 1; fi
}

pytest_step() { # pytest_step NAME [VAR=VALUE...]: pytest in that environment
  local name=$1 line np nf ne
  shift
  if [ ! -d tests/python ] || [ -z "$(find tests/python -name 'test_*.py' -o -name '*_test.py' | head -n 1)" ]; then
    echo
    echo "=== $name: no tests yet"
    return
  fi
  run "$name" 3600 env "$@" "$PY" -m pytest -q tests/python
  if [ "$rc" = 5 ]; then           # tests exist but none was collected
    count "$name (no tests collected)" 0 1
    return
  fi
  # "3 passed, 1 failed, 2 errors in 0.52s"
  line=$(grep -E '^(=+ )?[0-9]+ (passed|failed|error|errors|skipped|xfailed|xpassed|deselected)' "$log" | tail -n 1)
  np=$(grep -oE '[0-9]+ passed' <<<"$line" | grep -oE '[0-9]+' || true)
  nf=$(grep -oE '[0-9]+ failed' <<<"$line" | grep -oE '[0-9]+' || true)
  ne=$(grep -oE '[0-9]+ errors?' <<<"$line" | grep -oE '[0-9]+' || true)
  np=${np:-0}
  nf=$(( ${nf:-0} + ${ne:-0} ))
  if [ "$rc" != 0 ] && [ "$nf" = 0 ]; then nf=1; fi
  count "$name" "$np" "$nf"
}

# A runner that ends with a "TAG: N passed, M failed" line: that line counts.
suite_step() { # suite_step NAME TAG CMD...
  local name=$1 tag=$2 line np nf
  shift 2
  run "$name" 3600 "$@"
  line=$(grep -E "^$tag: [0-9]+ passed, [0-9]+ failed" "$log" | tail -n 1)
  np=$(sed -E "s/^$tag: ([0-9]+) passed.*/\\1/" <<<"$line")
  nf=$(sed -E 's/^[^,]*, ([0-9]+) failed.*/\1/' <<<"$line")
  np=${np:-0}
  nf=${nf:-0}
  if [ "$rc" != 0 ] && [ "$nf" = 0 ]; then nf=1; fi
  count "$name" "$np" "$nf"
}

# CPython's test_asyncio against the checked-in known failures (M counts
# the unexpected results).
conformance_step() { # conformance_step NAME [VAR=VALUE...]
  local name=$1
  shift
  suite_step "$name" conformance env "$@" "$PY" tests/conformance/run.py --check
}

# Another project's own tests on unixloop (tests/conformance/suites.py).
other_suite_step() { # other_suite_step SUITE NAME_SUFFIX [VAR=VALUE...]
  local suite=$1 name="$1's test suite on unixloop$2"
  shift 2
  suite_step "$name" "$suite" env "$@" "$PY" tests/conformance/suites.py "$suite"
}

simple_step "build C (build/)" 1800 "$MAKE" --no-print-directory build-c
ok_c=$rc
simple_step "build C with ASan/UBSan (build-asan/)" 1800 "$MAKE" --no-print-directory build-asan
ok_asan=$rc
simple_step "build Python package (.venv)" 1800 "$MAKE" --no-print-directory build-py
ok_py=$rc
simple_step "build Python package with ASan/UBSan (build-py-asan/)" 1800 \
  "$MAKE" --no-print-directory build-py-asan
ok_py_asan=$rc

for backend in epoll poll; do
  if [ "$ok_c" = 0 ]; then ctest_step build "$backend"; fi
  if [ "$ok_asan" = 0 ]; then ctest_step build-asan "$backend"; fi
done

if [ "$ok_c" = 0 ]; then
  simple_step "example build/examples/hello" 60 build/examples/hello
fi
if [ "$ok_asan" = 0 ]; then
  simple_step "example build-asan/examples/hello" 60 build-asan/examples/hello
fi

if [ "$ok_py" = 0 ]; then
  simple_step "example examples/hello.py" 60 "$PY" examples/hello.py
  # Each of its programs checks what it got; the timings are not judged.
  simple_step "example examples/demo.py" 300 "$PY" examples/demo.py
  pytest_step "pytest tests/python UNIXLOOP_BACKEND=epoll" UNIXLOOP_BACKEND=epoll
  pytest_step "pytest tests/python UNIXLOOP_BACKEND=poll" UNIXLOOP_BACKEND=poll
  if [ -f tests/conformance/run.py ]; then
    conformance_step "conformance check (CPython test_asyncio)"
  fi
  for suite in tornado aiosmtpd pyzmq; do
    other_suite_step "$suite" ""
  done
fi
# The binding's C under the sanitizers: PYTHONMALLOC=malloc so that Python
# objects are ASan-checked heap blocks too; no leak check (an interpreter
# frees little at exit); --capture=sys leaves fd 2 alone, so that a report
# written as the process aborts is shown, not lost with pytest's capture
# (the conformance runner keeps a crashed worker's output itself).
if [ "$ok_py" = 0 ] && [ "$ok_py_asan" = 0 ]; then
  asan_env=(PYTHONPATH=build-py-asan/lib PYTHONMALLOC=malloc
            LD_PRELOAD="$(cat build-py-asan/preload)"
            ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1)
  pytest_step "pytest tests/python, package built with ASan/UBSan" \
    "${asan_env[@]}" PYTEST_ADDOPTS=--capture=sys UNIXLOOP_BACKEND=epoll
  if [ -f tests/conformance/run.py ]; then
    conformance_step "conformance check, package built with ASan/UBSan" \
      "${asan_env[@]}"
  fi
  for suite in tornado aiosmtpd pyzmq; do
    other_suite_step "$suite" ", package built with ASan/UBSan" "${asan_env[@]}"
  done
fi

echo
if [ "${#failed_steps[@]}" -gt 0 ]; then
  echo "failed steps:"
  printf '  %s\n' "${failed_steps[@]}"
fi
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
