"""toolkit.runtime's process settings: the allocator keeps freed memory unless the user set it."""
from __future__ import annotations


def test_keep_freed_memory_sets_glibc_and_leaves_a_users_setting_alone(monkeypatch):
    """On Linux with glibc the allocator settings take; a MALLOC_* variable in the environment wins."""
    import sys

    from toolkit.runtime import keep_freed_memory
    if not sys.platform.startswith("linux"):
        assert keep_freed_memory() is False
        return
    assert keep_freed_memory() is True
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert keep_freed_memory() is False
