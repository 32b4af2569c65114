"""Fixtures for the pytest-benchmark regression suite (not run by CI).

Kept apart from tests/: these time things, they do not check correctness,
and a full run takes minutes.
"""

import os
import sys

import pytest

# Benchmark this checkout, not whatever adamfast is installed: comparing
# commits only means something if the code measured is the code checked out.
# `pytest bench/` puts bench/ on sys.path, not the repository root, so put the
# root first (the in-place build from `python setup.py build_ext --inplace`
# lives there).
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_ROOT, "adamfast")) and sys.path[:1] != [_ROOT]:
    sys.path.insert(0, _ROOT)


def pytest_addoption(parser):
    parser.addoption(
        "--bench-threads", type=int, default=None,
        help="threads for adamfast during the benchmarks (default: all cores)",
    )


@pytest.fixture(scope="session")
def bench_threads(request):
    import adamfast
    from adamfast.bench import core_count

    n = request.config.getoption("--bench-threads") or core_count()
    adamfast.set_num_threads(n)
    return n


@pytest.fixture(scope="session")
def flush(request):
    """Cold-cache flush run as pedantic's untimed `setup`, as the CLI does by default.

    A no-op under --benchmark-disable, so the smoke run allocates nothing big.
    """
    from adamfast.bench import CacheFlusher

    disabled = request.config.getoption("benchmark_disable", default=False)
    return CacheFlusher(enabled=not disabled)


def pytest_report_header(config):
    import adamfast

    return f"adamfast under test: {os.path.dirname(adamfast.__file__)}"


def pytest_benchmark_update_machine_info(config, machine_info):
    # Saved with every run, so `pytest-benchmark compare` output can be
    # checked for "same machine, same library versions" before trusting a diff.
    import numpy

    import adamfast
    from adamfast.bench import core_count, cpu_model, try_import

    machine_info["cpu_model"] = cpu_model()
    machine_info["cores"] = core_count()
    machine_info["bench_threads"] = config.getoption("--bench-threads") or core_count()
    machine_info["numpy"] = numpy.__version__
    numba = try_import("numba")
    machine_info["numba"] = getattr(numba, "__version__", None)
    machine_info["adamfast"] = adamfast.__version__
    machine_info["adamfast_backends"] = list(adamfast.available_backends())
    try:
        from adamfast._dispatch import cython_module

        machine_info["cython_build"] = cython_module().simd_info()
    except (ImportError, ValueError) as exc:
        machine_info["cython_build"] = repr(exc)
