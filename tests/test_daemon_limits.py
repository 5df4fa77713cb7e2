"""The daemon lifts its open-file limit: three descriptors per call outrun a 1024 default."""

from __future__ import annotations

import resource

from ctl.daemon import raise_descriptor_limit


def limits(soft, hard, *, refuse=False):
    calls = []

    def getrlimit(which):
        assert which == resource.RLIMIT_NOFILE
        return soft, hard

    def setrlimit(which, value):
        if refuse:
            raise ValueError("not permitted")
        calls.append(value)

    return getrlimit, setrlimit, calls


def test_the_soft_limit_goes_up_to_the_hard_one():
    get, set_, calls = limits(1024, 524288)
    assert raise_descriptor_limit(get, set_) == (1024, 524288)
    assert calls == [(524288, 524288)]


def test_nothing_changes_when_already_at_the_hard_limit_or_refused_or_unlimited():
    for soft, hard, refuse in [(4096, 4096, False), (1024, 4096, True),
                               (1024, resource.RLIM_INFINITY, False)]:
        get, set_, calls = limits(soft, hard, refuse=refuse)
        assert raise_descriptor_limit(get, set_) == (soft, soft)
        assert calls == []
