"""Shared fixtures of the library's tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def eager_fused(monkeypatch):
    """The fused path's kernels run uncompiled: the arithmetic is the same Python, without a
    cold compile per dtype and option set (a minute each). test_fused.py holds the compiled
    kernels to the reference."""
    from hvadam import _fused

    monkeypatch.setattr(_fused, "_compiled", lambda kernel: kernel)
