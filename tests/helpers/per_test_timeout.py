"""`--test-timeout SECONDS`: a test still running after that long fails with TimeoutError, and the run goes on.

For bench/device_check.sh's GPU tier, which must end inside its step's limit with a verdict for every
test it reached (pytest-timeout is not on the lent machine). A SIGALRM timer per test call raises in
the test's own thread (the main one); a test stuck inside one C call is stopped when that call returns.
Loaded by tests/conftest.py (or `-p per_test_timeout` with tests/helpers/ on the path).
"""

from __future__ import annotations

import signal

import pytest


def pytest_addoption(parser):
    parser.addoption("--test-timeout", type=float, default=0.0, metavar="SECONDS",
                     help="fail a test whose call runs longer than this (SIGALRM; 0, the default: no limit)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    limit = item.config.getoption("--test-timeout")
    if not limit or not hasattr(signal, "SIGALRM"):
        yield
        return

    def stop(signum, frame):
        raise TimeoutError(f"{item.nodeid} ran past --test-timeout {limit:g} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
