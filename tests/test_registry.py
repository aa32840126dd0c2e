"""The name → factory registry shared by architectures and tasks."""

from __future__ import annotations

import pytest
from torch import nn

from harness.archs import count_params, get_model_fn, list_models
from harness.archs.recurrent import GATES, cell_kind
from harness.errors import HarnessError
from harness.registry import Registry, meta_of
from harness.tasks import list_tasks, load_task


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


# name → what its factory builds: recurrent cell (torch's mode, or harness's sigmoid Elman),
# bidirectional, and the family the registry records for it.
BUILT_IN = {
    "rnn": ("RNN_TANH", False, "RNN"), "rnn-relu": ("RNN_RELU", False, "RNN"),
    "rnn-sigmoid": ("RNN_SIGMOID", False, "RNN"), "brnn": ("RNN_TANH", True, "RNN"),
    "lstm": ("LSTM", False, "LSTM"), "bilstm": ("LSTM", True, "LSTM"),
    "gru": ("GRU", False, "GRU"), "bigru": ("GRU", True, "GRU"),
}


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_a_name_looks_up_the_factory_of_that_architecture(name):
    cell, bidirectional, family = BUILT_IN[name]
    model = get_model_fn(name)(input_size=3, output_size=2, io="many-to-one", seq_len=5, hidden_size=4)
    assert (cell_kind(model.rnn), model.rnn.bidirectional) == (cell, bidirectional)
    dirs = 2 if bidirectional else 1
    assert count_params(model) == dirs * GATES[cell] * 4 * (3 + 4 + 2) + dirs * 4 * 2 + 2  # one layer and the head
    assert meta_of(get_model_fn(name)) == {"family": family, "bidirectional": bidirectional}


def test_the_other_built_ins_and_the_task_registry():
    seed = get_model_fn("seed-lstm")(input_size=28, output_size=10, io="many-to-one", seq_len=28)
    assert [type(m) for m in (seed.lstm1, seed.lstm2)] == [nn.LSTM, nn.LSTM] and count_params(seed) == 221_898
    mlp = get_model_fn("mlp")(input_size=3, output_size=2, io="many-to-one", seq_len=5, hidden_size=4, num_layers=1)
    assert not any(isinstance(m, nn.RNNBase) for m in mlp.modules()) and count_params(mlp) == 15 * 4 + 4 + 4 * 2 + 2
    assert list_models("bi*") == ["bigru", "bilstm"]
    task = load_task("digits-flat")  # a task name finds the task of that name, not a neighbour
    assert (task.name, task.io, task.input_size, task.output_size) == ("digits-flat", "one-to-one", 64, 10)
    assert "mnist1d" in list_tasks() and "mnist1d-generate" in list_tasks("mnist1d*")
