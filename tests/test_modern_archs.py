"""The families proposed since the classic four, each checked against a slow, obviously-correct
reference: a Python loop over time written from its paper's equations, in float64, on the
layer's own parameters. Outputs, final states and every gradient must agree; the scans pass
gradcheck and equal the loop at 784 steps."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from harness.archs import create_model
from harness.archs.sequence import SequenceNet, linear_scan, log_scan
from harness.kernels import kernel_path

B, T, D = 3, 9, 5  # batch, steps, width
MODERN = ["indrnn", "ornn", "lru", "mingru", "minlstm", "mamba"]


def layer_of(name: str, seq_len: int = T, **kw):
    torch.manual_seed(0)
    model = create_model(name, input_size=D, output_size=2, io="many-to-many", seq_len=seq_len,
                         hidden_size=D, num_layers=2, **kw).double()
    return model.stacks[0].layers[1]  # a layer after the first: D → D, residual where the family has one


# --- the references: each paper's equations, one step at a time --------------------------------


def ref_indrnn(layer, x):
    u = layer.u.clamp(-layer.bound, layer.bound)
    h, hs = x.new_zeros(B, D), []
    for t in range(x.shape[1]):
        h = torch.relu(x[:, t] @ layer.input.weight.T + layer.input.bias + u * h)
        hs.append(h)
    return torch.stack(hs, 1) + x, h


def ref_ornn(layer, x):
    u = layer.recurrent.weight
    h, hs = x.new_zeros(B, D), []
    for t in range(x.shape[1]):
        z = x[:, t] @ layer.input.weight.T + layer.input.bias + h @ u.T
        h = torch.sign(z) * torch.relu(z.abs() + layer.bias)  # modReLU
        hs.append(h)
    return torch.stack(hs, 1), h


def ref_lru(layer, x):
    lam = torch.exp(-torch.exp(layer.nu_log) + 1j * torch.exp(layer.theta_log))
    b_mat, c_mat = torch.complex(layer.b_re, layer.b_im), torch.complex(layer.c_re, layer.c_im)
    gamma = torch.exp(layer.gamma_log)
    u = F.layer_norm(x, (D,), layer.norm.weight, layer.norm.bias)
    s, ys = torch.zeros(B, len(lam), dtype=torch.complex128), []
    for t in range(x.shape[1]):
        s = lam * s + gamma * (u[:, t].to(torch.complex128) @ b_mat.T)
        ys.append((s @ c_mat.T).real + layer.d * u[:, t])
    y = F.gelu(torch.stack(ys, 1))
    a, g = (y @ layer.glu.weight.T + layer.glu.bias).chunk(2, -1)
    return x + a * torch.sigmoid(g), s


def _g(v):
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


def ref_mingru(layer, x):
    k_z, k_h = (F.layer_norm(x, (D,), layer.norm.weight, layer.norm.bias) @ layer.proj.weight.T + layer.proj.bias).chunk(2, -1)
    h, hs = x.new_zeros(B, D), []
    for t in range(x.shape[1]):
        z = torch.sigmoid(k_z[:, t])
        h = (1 - z) * h + z * _g(k_h[:, t])
        hs.append(h)
    return x + torch.stack(hs, 1), h


def ref_minlstm(layer, x):
    k_f, k_i, k_h = (F.layer_norm(x, (D,), layer.norm.weight, layer.norm.bias) @ layer.proj.weight.T + layer.proj.bias).chunk(3, -1)
    h, hs = x.new_zeros(B, D), []
    for t in range(x.shape[1]):
        f, i = torch.sigmoid(k_f[:, t]), torch.sigmoid(k_i[:, t])
        h = f / (f + i) * h + i / (f + i) * _g(k_h[:, t])
        hs.append(h)
    return x + torch.stack(hs, 1), h


def ref_mamba(layer, x):
    steps = x.shape[1]
    u, z = (F.layer_norm(x, (D,), layer.norm.weight, layer.norm.bias) @ layer.in_proj.weight.T).chunk(2, -1)
    width = layer.conv.weight.shape[-1]
    padded = F.pad(u, (0, 0, width - 1, 0))  # causal: step t sees steps t−3 … t
    u = F.silu(torch.stack([(padded[:, t : t + width] * layer.conv.weight[:, 0].T).sum(1) for t in range(steps)], 1)
               + layer.conv.bias)
    dt, b, c = (u @ layer.x_proj.weight.T).split([layer.rank, layer.state, layer.state], -1)
    dt = F.softplus(dt @ layer.dt_proj.weight.T + layer.dt_proj.bias)
    a = -torch.exp(layer.a_log)
    h, ys = x.new_zeros(B, *a.shape), []
    for t in range(steps):
        h = torch.exp(dt[:, t, :, None] * a) * h + dt[:, t, :, None] * b[:, t, None, :] * u[:, t, :, None]
        ys.append((h * c[:, t, None, :]).sum(-1) + layer.d * u[:, t])
    y = torch.stack(ys, 1) * F.silu(z)
    return x + y @ layer.out_proj.weight.T, h


REFERENCES = {"indrnn": ref_indrnn, "ornn": ref_ornn, "lru": ref_lru, "mingru": ref_mingru, "minlstm": ref_minlstm,
              "mamba": ref_mamba}


def final_state(states):
    last = states[-1]
    last = last if isinstance(last, tuple) else (last,)
    return torch.complex(*last) if len(last) == 2 else last[0]


@pytest.mark.parametrize("name", MODERN)
def test_each_layer_equals_its_papers_equations_in_outputs_final_state_and_gradients(name):
    layer = layer_of(name)
    x = torch.randn(B, T, D, dtype=torch.float64, requires_grad=True)
    want, want_state = REFERENCES[name](layer, x)
    got = layer(x)  # the fast path: a parallel scan, harness's scan or the loop
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    stepped, states = layer(x, return_states=True)
    torch.testing.assert_close(stepped, want, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(final_state(states), want_state, rtol=1e-9, atol=1e-10)
    weights = torch.randn_like(want)  # a loss that reads every output differently
    params = [x, *layer.parameters()]
    g_got = torch.autograd.grad((got * weights).sum(), params)
    g_want = torch.autograd.grad((want * weights).sum(), params)
    for p, a, b in zip(["x", *dict(layer.named_parameters())], g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=lambda m, p=p: f"∂/∂{p}: {m}")


@pytest.mark.parametrize("name", MODERN)
def test_each_layer_passes_gradcheck(name):
    layer = layer_of(name, seq_len=4)
    x = torch.randn(2, 4, D, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: layer(v), (x,))


@pytest.mark.parametrize("chunk", [None, 1, 3, 8])
def test_the_linear_scan_is_the_recurrence_and_passes_gradcheck(chunk):
    a = torch.rand(2, 11, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 11, 3, dtype=torch.float64, requires_grad=True)
    h, want = torch.zeros(2, 3, dtype=torch.float64), []
    for t in range(11):
        h = a[:, t] * h + b[:, t]
        want.append(h)
    torch.testing.assert_close(linear_scan(a, b, chunk), torch.stack(want, 1))
    assert torch.autograd.gradcheck(lambda a_, b_: linear_scan(a_, b_, chunk), (a, b))
    lam = torch.polar(torch.rand(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) * 6)  # complex, shared over t
    z = torch.complex(b, b.flip(0)).detach()
    h, want = torch.zeros(2, 3, dtype=torch.complex128), []
    for t in range(11):
        h = lam * h + z[:, t]
        want.append(h)
    torch.testing.assert_close(linear_scan(lam, z, chunk), torch.stack(want, 1))
    # the hand-written backward (a reverse scan) on complex values and a coefficient broadcast over t
    assert torch.autograd.gradcheck(lambda l_, z_: linear_scan(l_, z_, chunk), (lam.requires_grad_(), z.requires_grad_()))


def test_the_log_space_scan_is_the_recurrence_and_passes_gradcheck():
    a = torch.rand(2, 13, 3, dtype=torch.float64).clamp(min=0.05).requires_grad_()
    b = torch.rand(2, 13, 3, dtype=torch.float64).clamp(min=0.05).requires_grad_()
    h, want = torch.zeros(2, 3, dtype=torch.float64), []
    for t in range(13):
        h = a[:, t] * h + b[:, t]
        want.append(h)
    torch.testing.assert_close(log_scan(a.log(), b.log()), torch.stack(want, 1))
    assert torch.autograd.gradcheck(lambda a_, b_: log_scan(a_.log(), b_.log()), (a, b))


@pytest.mark.parametrize("name", ["lru", "mingru", "minlstm", "mamba"])
def test_the_parallel_scan_equals_the_loop_at_784_steps(name):
    kw = {"state_size": 4} if name == "mamba" else {}
    torch.manual_seed(0)
    build = {scan: create_model(name, input_size=1, output_size=10, io="many-to-one", seq_len=784, hidden_size=8, scan=scan,
                                **kw).double() for scan in ("parallel", "loop")}
    build["loop"].load_state_dict(build["parallel"].state_dict())
    assert kernel_path(build["loop"]) == "loop" and kernel_path(build["parallel"]) in ("scan", "logscan")
    x = torch.randn(2, 784, 1, dtype=torch.float64)
    outs, grads = {}, {}
    for scan, model in build.items():
        outs[scan] = model(x)
        grads[scan] = torch.autograd.grad(outs[scan].square().sum(), list(model.parameters()))
    torch.testing.assert_close(outs["parallel"], outs["loop"], rtol=1e-9, atol=1e-11)
    for a, b in zip(grads["parallel"], grads["loop"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


def test_indrnn_keeps_the_papers_bound_and_its_top_layer_starts_near_one():
    model = create_model("indrnn", input_size=1, output_size=2, io="many-to-one", seq_len=100, num_layers=2)
    bound = 2 ** (1 / 100)
    lower, top = (stack_layer.u for stack_layer in model.stacks[0].layers)
    assert 0 <= lower.min() and lower.max() <= bound
    assert 1 / bound <= top.min() and top.max() <= bound
    with torch.no_grad():
        top.fill_(5.0)  # an optimiser step past the bound: the recurrence still uses 2^{1/T}
    layer = model.stacks[0].layers[1]
    x = torch.zeros(1, 3, 128)
    layer.input.bias.data.fill_(1.0)
    layer.input.weight.data.zero_()
    out = layer(x) - x  # h_1 = 1, h_2 = 1 + bound, h_3 = 1 + bound + bound²
    torch.testing.assert_close(out[0, :, 0], torch.tensor([1.0, 1 + bound, 1 + bound + bound**2]))


def test_the_orthogonal_rnns_recurrent_matrix_stays_orthogonal_through_training():
    torch.manual_seed(0)
    model = create_model("ornn", input_size=2, output_size=3, io="many-to-one", seq_len=6, hidden_size=16)
    start = model.stacks[0].layers[0].recurrent.weight.detach().clone()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(5):
        opt.zero_grad()
        model(torch.randn(8, 6, 2)).square().sum().backward()
        opt.step()
    u = model.stacks[0].layers[0].recurrent.weight.detach()
    torch.testing.assert_close(u @ u.T, torch.eye(16), atol=1e-5, rtol=0)
    assert (u - start).abs().max() > 1e-3  # it moved: trained, and still orthogonal


def test_lru_starts_on_its_ring_with_the_normalisation():
    model = create_model("lru", input_size=1, output_size=2, io="many-to-one", seq_len=10, hidden_size=256)
    layer = model.stacks[0].layers[0]
    lam_re, lam_im = layer.lam()
    modulus = torch.sqrt(lam_re**2 + lam_im**2)
    assert 0.9 <= modulus.min() and modulus.max() <= 0.999
    torch.testing.assert_close(torch.exp(layer.gamma_log), torch.sqrt(1 - modulus**2), rtol=1e-4, atol=1e-5)  # float32 near |λ| = 1
    phase = torch.exp(layer.theta_log)
    assert 0 <= phase.min() and phase.max() <= 2 * math.pi


def test_mamba_starts_with_the_papers_state_matrix_and_step_sizes():
    model = create_model("mamba", input_size=1, output_size=2, io="many-to-one", seq_len=10, hidden_size=32)
    layer = model.stacks[0].layers[0]
    torch.testing.assert_close(-torch.exp(layer.a_log), -torch.arange(1.0, 17.0).expand(64, 16))
    dt = F.softplus(layer.dt_proj.bias)
    assert 1e-3 * 0.999 <= dt.min() and dt.max() <= 0.1 * 1.001


@pytest.mark.parametrize("name", MODERN)
def test_bidirectional_reads_the_reversed_sequence_with_its_own_weights(name):
    torch.manual_seed(0)
    model = create_model(name, input_size=D, output_size=2, io="many-to-many", seq_len=T, hidden_size=D,
                         bidirectional=True).double().eval()
    assert isinstance(model, SequenceNet) and model.bidirectional
    x = torch.randn(B, T, D, dtype=torch.float64)
    forward, backward = model.stacks
    joined = torch.cat([forward(x), backward(x.flip(1)).flip(1)], -1)
    torch.testing.assert_close(model(x), model.head(joined))
    _, states = model(x, return_hidden=True)
    # the backward direction's states in time order: its state at t = 0 is the last it computes
    torch.testing.assert_close(final_state(states[1][::-1]), final_state(backward(x.flip(1), return_states=True)[1]))


@pytest.mark.parametrize("name", ["indrnn", "ornn"])
def test_under_bf16_autocast_the_loop_families_recur_in_float32(name):
    """In bf16, 2^{1/784} rounds to 1 (IndRNN's bound gone) and an orthogonal U drifts 0.4% a step."""
    torch.manual_seed(0)
    model = create_model(name, input_size=1, output_size=2, io="many-to-one", seq_len=784, hidden_size=8)
    x = torch.randn(2, 784, 1)
    layer = model.stacks[0].layers[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, states = layer(x, return_states=True)
    assert states[-1].dtype == torch.float32
    ref = layer(x)
    assert (out - ref).abs().mean() < 0.05 * ref.abs().mean()  # only the input projection was bf16
