"""The name → factory registry shared by architectures and tasks."""

from __future__ import annotations

import pytest

from harness.archs import list_models
from harness.errors import HarnessError
from harness.registry import Registry
from harness.tasks import list_tasks


def test_register_names_wildcards_and_close_matches():
    reg = Registry("widget")

    @reg.register
    def small_lstm():
        return 1

    @reg.register(name="big")
    def anything():
        return 2

    assert reg.names() == ["big", "small-lstm"]
    assert reg.names("*lstm*") == ["small-lstm"]
    assert reg.get("big")() == 2
    with pytest.raises(HarnessError, match=r"unknown widget 'small-lstn'; did you mean small-lstm\?"):
        reg.get("small-lstn")
    with pytest.raises(HarnessError, match="known: big, small-lstm"):
        reg.get("zzz")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register(small_lstm)


def test_builtin_registries_hold_the_compared_families():
    assert {"rnn", "lstm", "gru", "brnn", "bilstm", "bigru", "mlp", "seed-lstm"} <= set(list_models())
    assert list_models("bi*") == ["bigru", "bilstm"]
    assert "mnist1d" in list_tasks()
