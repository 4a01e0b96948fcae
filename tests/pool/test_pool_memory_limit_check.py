"""A bad Pool option fails at construction, not at the first task."""

import pytest

import pardo


def test_pool_checks_memory_limit_at_construction():
    with pytest.raises(ValueError, match="'1Q'"):
        pardo.Pool(1, memory_limit="1Q")
