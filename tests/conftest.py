from __future__ import annotations

from pathlib import Path

import pytest

TAU2 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tau2-bench" / "airline"


@pytest.fixture(scope="session")
def tau2_dir() -> Path:
    if not TAU2.is_dir():
        pytest.skip(f"real tau2 logs not found at {TAU2}")
    return TAU2


@pytest.fixture(scope="session")
def tau2_rollouts(tau2_dir: Path):
    from stepcredit.io import load

    return load(tau2_dir)


@pytest.fixture
def empty_pool():
    """stepcredit's pool of recycled host buffers emptied before and after the test."""
    from stepcredit import release_buffers

    release_buffers()
    yield
    release_buffers()
