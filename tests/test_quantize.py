"""spaces.quantize and spaces.prune: fake-quant error bounds, level counts, the straight-through
gradient, the activation range tracker, and the magnitude / filter-norm pruning rules."""
from __future__ import annotations

import pytest
import torch

from spaces.prune import magnitude_mask, strongest_filters
from spaces.precision import FLOAT_BITS, activation_range
from spaces.quantize import ActivationQuantizer, activation_params, quantize_activation, quantize_weight

BITS = [2, 3, 4, 8, 16]
EPS = 4 * torch.finfo(torch.float32).eps  # relative float32 slack on top of the rounding bound


def weight(seed: int = 0, shape=(6, 3, 3, 3)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    # channels of very different magnitudes, so a per-tensor scale would break the per-channel bound
    return w * torch.logspace(-3, 1, shape[0]).view(-1, *[1] * (len(shape) - 1))


# --- weights ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(6, 3, 3, 3), (6, 1, 3, 3), (5, 7)], ids=["conv", "depthwise", "linear"])
@pytest.mark.parametrize("bits", BITS)
def test_weight_error_within_half_a_step_per_channel(bits, shape):
    w = weight(bits, shape)
    q = quantize_weight(w, bits)
    assert q.shape == w.shape and q.dtype == w.dtype
    dims = tuple(range(1, w.dim()))
    qmax = 2 ** (bits - 1) - 1
    scale = w.abs().amax(dim=dims, keepdim=True) / qmax
    bound = scale / 2 + EPS * w.abs().amax(dim=dims, keepdim=True)
    assert ((q - w).abs() <= bound).all()
    # every value is an integer multiple of its channel's scale within [-qmax, qmax]
    k = q / scale
    assert torch.allclose(k, k.round(), atol=1e-3)
    assert (k.round().abs() <= qmax).all()
    # the channel maximum is representable exactly (symmetric range reaches it)
    assert torch.allclose(q.abs().amax(dim=dims), w.abs().amax(dim=dims), rtol=1e-6)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_weight_distinct_values_per_channel(bits):
    # each channel spread evenly over its own symmetric range: the bound is reached exactly
    g = torch.Generator().manual_seed(bits)
    spans = torch.tensor([0.01, 1.0, 30.0, 0.5])
    w = torch.stack([torch.linspace(-a, a, 16 * 9)[torch.randperm(16 * 9, generator=g)] for a in spans])
    w = w.view(4, 16, 3, 3)
    q = quantize_weight(w, bits)
    for c in range(w.shape[0]):
        assert q[c].unique().numel() == 2**bits - 1


@pytest.mark.parametrize("bits", [8, 16])
def test_weight_distinct_values_bound_wide(bits):
    w = weight(bits, (3, 8, 3, 3))
    q = quantize_weight(w, bits)
    for c in range(w.shape[0]):
        assert q[c].unique().numel() <= min(2**bits - 1, w[c].numel())


def test_weight_32_bits_is_identity():
    w = weight()
    assert quantize_weight(w, FLOAT_BITS) is w
    assert quantize_weight(w, 64) is w


def test_weight_zero_channel_stays_zero():
    w = weight()
    w[2] = 0
    q = quantize_weight(w, 4)
    assert torch.isfinite(q).all() and (q[2] == 0).all()


@pytest.mark.parametrize("bits", BITS)
def test_weight_straight_through_gradient_is_ones(bits):
    w = weight(bits).requires_grad_(True)
    quantize_weight(w, bits).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


# --- activations -------------------------------------------------------------------------------


RANGES = [(-1.3, 2.1), (0.0, 6.0), (-4.0, 0.5), (-0.001, 10.0)]


@pytest.mark.parametrize("lo,hi", RANGES)
@pytest.mark.parametrize("bits", BITS)
def test_activation_error_inside_range(bits, lo, hi):
    lo_t, hi_t = torch.tensor(lo), torch.tensor(hi)
    x = torch.linspace(lo, hi, 2001)
    q = quantize_activation(x, lo_t, hi_t, bits)
    scale = (hi - lo) / (2**bits - 1)
    assert ((q - x).abs() <= scale / 2 + EPS * max(abs(lo), abs(hi))).all()


@pytest.mark.parametrize("lo,hi", RANGES)
@pytest.mark.parametrize("bits", BITS)
def test_activation_saturates_where_its_storage_type_does(bits, lo, hi):
    """A b-bit grid stored in uint8 (uint16 above 8 bits) saturates at the type's limits, as a runtime's
    QuantizeLinear does: at 8 and 16 bits that is the range's ends."""
    lo_t, hi_t = torch.tensor(lo), torch.tensor(hi)
    scale, zero = activation_params(lo_t, hi_t, bits)
    qmin, qmax = activation_range(bits)
    far = torch.tensor([lo - 1e6, hi + 1e6])
    q = quantize_activation(far, lo_t, hi_t, bits).tolist()
    assert q == pytest.approx([(qmin - int(zero)) * float(scale), (qmax - int(zero)) * float(scale)], rel=1e-6)
    if bits in (8, 16):
        slack = float(scale) / 2 + EPS * max(abs(lo), abs(hi))
        assert abs(q[0] - lo) <= slack and abs(q[1] - hi) <= slack


@pytest.mark.parametrize("lo,hi", RANGES)
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_activation_level_count_and_exact_zero(bits, lo, hi):
    lo_t, hi_t = torch.tensor(lo), torch.tensor(hi)
    x = torch.linspace(lo, hi, 5000)
    q = quantize_activation(x, lo_t, hi_t, bits)
    assert q.unique().numel() <= 2**bits
    zero = quantize_activation(torch.zeros(3), lo_t, hi_t, bits)
    assert torch.equal(zero, torch.zeros(3))
    if bits <= 4:  # dense input: every level is used
        assert q.unique().numel() == 2**bits


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_activation_straight_through_gradient(bits):
    lo, hi = torch.tensor(-1.0), torch.tensor(2.0)
    x = torch.linspace(-0.9, 1.9, 50).requires_grad_(True)
    quantize_activation(x, lo, hi, bits).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_activation_degenerate_all_zero_range():
    q = quantize_activation(torch.zeros(4), torch.tensor(0.0), torch.tensor(0.0), 8)
    assert torch.equal(q, torch.zeros(4))


# --- ActivationQuantizer -----------------------------------------------------------------------


def test_activation_quantizer_identity_at_32_bits():
    aq = ActivationQuantizer()
    assert aq.bits == FLOAT_BITS
    x = torch.randn(2, 3, 4, 4)
    for training in (True, False):
        aq.train(training)
        assert aq(x) is x
    assert not aq.observed  # nothing recorded while float


@pytest.mark.parametrize("offset", [-5.0, 0.0, 5.0], ids=["negative", "centred", "positive"])
def test_activation_quantizer_records_range_in_training(offset):
    aq = ActivationQuantizer()
    aq.bits = 8
    aq.train()
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1)) + offset
    y = aq(x)
    lo, hi = aq.lo.item(), aq.hi.item()
    assert bool(aq.observed)
    assert lo <= 0.0 <= hi
    assert lo == pytest.approx(min(x.min().item(), 0.0)) and hi == pytest.approx(max(x.max().item(), 0.0))
    # the output is the fake-quantized input over that range, not the input itself
    assert torch.equal(y, quantize_activation(x, aq.lo, aq.hi, 8))
    assert not torch.equal(y, x)
    # a second batch moves the range by the momentum (moving average), still around zero
    x2 = 3 * x
    aq(x2)
    m = aq.momentum
    assert aq.lo.item() == pytest.approx((1 - m) * lo + m * min(x2.min().item(), 0.0), rel=1e-5)
    assert aq.hi.item() == pytest.approx((1 - m) * hi + m * max(x2.max().item(), 0.0), rel=1e-5)
    assert aq.lo.item() <= 0.0 <= aq.hi.item()


def test_activation_quantizer_range_frozen_in_eval():
    aq = ActivationQuantizer()
    aq.bits = 8
    aq.train()
    aq(torch.linspace(-1, 2, 100))
    lo, hi = aq.lo.clone(), aq.hi.clone()
    aq.eval()
    wide = torch.linspace(-50, 80, 100)
    y = aq(wide)
    assert torch.equal(aq.lo, lo) and torch.equal(aq.hi, hi)
    assert y.min().item() >= lo.item() - 1 and y.max().item() <= hi.item() + 1  # clamped to the old range
    with torch.no_grad():
        aq(torch.randn(10) * 100)
    assert torch.equal(aq.lo, lo) and torch.equal(aq.hi, hi)


def test_activation_quantizer_range_is_saved_in_state_dict():
    aq = ActivationQuantizer()
    aq.bits = 8
    aq(torch.linspace(-1, 3, 10))
    other = ActivationQuantizer()
    other.load_state_dict(aq.state_dict())
    assert other.lo.item() == aq.lo.item() and other.hi.item() == aq.hi.item() and bool(other.observed)


# --- pruning -----------------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [0.1, 0.25, 0.5, 0.75, 0.9])
@pytest.mark.parametrize("shape", [(8, 4, 3, 3), (6, 1, 3, 3), (10, 7)])
def test_magnitude_mask_zeros_exactly_the_smallest(shape, sparsity):
    g = torch.Generator().manual_seed(len(shape))
    w = torch.randn(shape, generator=g)  # continuous: no ties
    mask = magnitude_mask(w, sparsity)
    n = w.numel()
    zeros = round(sparsity * n)
    assert mask.shape == w.shape and mask.dtype == w.dtype
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert int((mask == 0).sum()) == zeros
    pruned, kept = w.abs()[mask == 0], w.abs()[mask == 1]
    assert pruned.max() < kept.min()
    # exactly the set of the `zeros` smallest magnitudes
    smallest = set(w.abs().flatten().argsort()[:zeros].tolist())
    assert set((mask.flatten() == 0).nonzero().flatten().tolist()) == smallest
    # it does not touch the weight nor record gradients
    assert not mask.requires_grad


def test_magnitude_mask_zero_sparsity_is_none():
    w = torch.randn(4, 3, 3, 3)
    assert magnitude_mask(w, 0.0) is None
    assert magnitude_mask(torch.randn(3), 0.1) is None  # rounds to zero weights removed


def test_magnitude_mask_negative_weights_by_magnitude():
    w = torch.tensor([[-5.0, 0.1], [-0.2, 3.0]])
    assert torch.equal(magnitude_mask(w, 0.5), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))


def test_strongest_filters_by_l1_norm():
    w = torch.zeros(5, 2, 1, 1)
    # L1 norms: 3, 10, 1, 7, 4 (signs must not matter)
    w[:, 0, 0, 0] = torch.tensor([1.0, -6.0, 0.5, 7.0, -2.0])
    w[:, 1, 0, 0] = torch.tensor([-2.0, 4.0, -0.5, 0.0, 2.0])
    assert strongest_filters(w, 2).tolist() == [1, 3]
    assert strongest_filters(w, 3).tolist() == [1, 3, 4]
    assert strongest_filters(w, 5).tolist() == [0, 1, 2, 3, 4]
    # L1, not L2: a filter with one large weight loses to one with many medium ones
    v = torch.tensor([[[[3.0]], [[0.0]], [[0.0]]], [[[1.5]], [[1.5]], [[1.5]]]])
    assert strongest_filters(v, 1).tolist() == [1]
