"""Test tiers: fast CPU tests by default; `gpu` skips without CUDA; `slow` runs only with `-m slow`."""
import os

import pytest
import torch

from per_test_timeout import pytest_addoption, pytest_runtest_call  # noqa: F401  (hooks: --test-timeout)

# Without CUDA, Triton kernels run in the interpreter on CPU tensors. Triton reads
# this when a kernel is decorated, so it must be set before `kernels` is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    markexpr = config.getoption("-m") or ""
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_slow = pytest.mark.skip(reason="slow test: run with -m slow")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "slow" in item.keywords and "slow" not in markexpr:
            item.add_marker(skip_slow)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test stopped by an interpreter that cannot run the Triton kernels (kernels.common.INTERPRETER_CLASH:
    an old Triton beside a new numpy) is reported as skipped, with the reason and the fix, not as an error."""
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is None or report.passed:
        return
    from kernels.common import INTERPRETER_CLASH

    if INTERPRETER_CLASH and INTERPRETER_CLASH in str(call.excinfo.value):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {INTERPRETER_CLASH}")


@pytest.fixture
def f64():
    """Float64 options for reference checks."""
    return dict(dtype=torch.float64, device="cpu")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: OpenMP barriers cost more than a second thread saves (10-100x on a shared CPU).

    Use with `pytestmark = pytest.mark.usefixtures("one_thread")`.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
