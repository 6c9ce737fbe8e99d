"""Shared test helpers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Keep each test process to one intra-op thread: pytest-xdist already uses every core.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _register_hypothesis_profiles() -> None:
    """Fuzz test profiles: "fuzz" (default: a modest number of examples per property, no
    per-example deadline since a load imports a runtime the first time) and "deep" (many more,
    for a slow run): HYPOTHESIS_PROFILE=deep or pytest --hypothesis-profile deep."""
    try:
        from hypothesis import HealthCheck, settings
    except ImportError:  # the fuzz tests skip themselves without hypothesis
        return
    quiet = [HealthCheck.too_slow, HealthCheck.data_too_large]
    settings.register_profile("fuzz", max_examples=100, deadline=None, suppress_health_check=quiet,
                              print_blob=True)
    settings.register_profile("deep", max_examples=2000, deadline=None, suppress_health_check=quiet,
                              print_blob=True)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fuzz"))


_register_hypothesis_profiles()


def pytest_report_header(config):
    from backends.tvm.cpu import host_summary

    return f"host CPU: {host_summary()}"


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def replace_first_relu_with_neg(graph) -> bool:
    """A deliberately wrong rewrite (relu -> neg) that verification and the pass checker must
    catch; shared by the pass and CLI tests."""
    for node in list(graph.nodes):
        if node.op == "relu":
            neg = graph.insert_before(node, "neg", [node.inputs[0]]).output
            graph.replace_all_uses_with(node.output, neg)
            graph.remove_node(node)
            return True
    return False


@pytest.fixture(autouse=True, scope="session")
def _private_library_cache(tmp_path_factory):
    """TVM and HLS libraries extracted by load() go to a per-run directory, not the user's cache
    (tests that check the cache itself point it elsewhere)."""
    if "AOT_COMPILER_CACHE" not in os.environ:
        os.environ["AOT_COMPILER_CACHE"] = str(tmp_path_factory.mktemp("aot-cache"))
    yield
