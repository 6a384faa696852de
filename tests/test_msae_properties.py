"""Property-based tests of MSAE encode/decode: every input either works or raises a documented
error (MSAEConfigError, ActivationShapeError, NonFiniteActivationsError), never a raw torch
error and never silent garbage (NaN codes, a TopK with more than k active latents)."""

from __future__ import annotations

import math
from functools import cache

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from msae_plugin.errors import ActivationShapeError, MSAEConfigError, NonFiniteActivationsError
from msae_plugin.msae.config import MSAEConfig
from msae_plugin.msae.sae import MSAE

D_IN, D_SAE = 6, 24
SAE_DTYPES = ["float32", "float64", "float16", "bfloat16"]
INPUT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int32,
                torch.int64, torch.uint8, torch.bool]
FAST = settings(deadline=None, max_examples=40)


@cache
def sae_of(dtype: str) -> MSAE:
    """One MSAE per dtype, with signed weights and non-trivial statistics (built once)."""
    sae = MSAE(MSAEConfig(d_in=D_IN, d_sae=D_SAE, k_start=4, dtype=dtype))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True))
        sae.input_mean.copy_(torch.randn(D_IN, generator=g))
        sae.input_scale.fill_(0.5)
    return sae


lead_shapes = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)
valid_k = st.one_of(st.none(), st.integers(1, D_SAE))


def make_x(lead: tuple[int, ...], dtype: torch.dtype, seed: int, scale: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, D_IN, generator=g, dtype=torch.float64) * scale
    if dtype == torch.bool:
        return x > 0
    if not dtype.is_floating_point:
        info = torch.iinfo(dtype)
        return x.round().clamp(info.min, info.max).to(dtype)
    return x.to(dtype)


def check_codes(z: torch.Tensor, lead: tuple[int, ...], k: int | None, sae: MSAE) -> None:
    assert z.shape == (*lead, D_SAE)
    assert z.dtype == sae.dtype
    assert torch.isfinite(z).all()
    assert (z >= 0).all()
    if k is not None and z.numel():
        assert int((z != 0).sum(-1).max()) <= k


@FAST
@given(
    sae_dtype=st.sampled_from(SAE_DTYPES),
    in_dtype=st.sampled_from(INPUT_DTYPES),
    lead=lead_shapes,
    k=valid_k,
    seed=st.integers(0, 2**16),
    scale=st.sampled_from([1e-3, 1.0, 30.0]),
)
def test_valid_inputs_give_finite_codes_and_round_trip_shapes(
    sae_dtype, in_dtype, lead, k, seed, scale
):
    sae = sae_of(sae_dtype)
    x = make_x(lead, in_dtype, seed, scale)
    with torch.no_grad():
        z = sae.encode(x, k=k)
        check_codes(z, lead, k, sae)
        out = sae.decode(z)
        assert out.shape == (*lead, D_IN)
        assert torch.isfinite(out).all()


@FAST
@given(
    k=st.one_of(
        st.none(), st.integers(-3, D_SAE + 3), st.booleans(),
        st.floats(allow_nan=True, allow_infinity=True), st.just("8"), st.just([8]),
    ),
    lead=lead_shapes,
)
def test_any_k_works_or_raises_msae_config_error(k, lead):
    sae = sae_of("float32")
    x = make_x(lead, torch.float32, 0, 1.0)
    valid = k is None or (type(k) is int and 1 <= k <= D_SAE)
    with torch.no_grad():
        if valid:
            check_codes(sae.encode(x, k=k), lead, k, sae)
        else:
            try:
                sae.encode(x, k=k)
            except MSAEConfigError as exc:
                assert "k" in str(exc)
            else:
                raise AssertionError(f"k={k!r} was accepted")


@FAST
@given(
    sae_dtype=st.sampled_from(SAE_DTYPES),
    lead=st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple),
    bad=st.sampled_from([math.nan, math.inf, -math.inf, 1e30, -1e38, 3e38]),
    seed=st.integers(0, 2**16),
    k=valid_k,
)
def test_non_finite_or_huge_values_are_refused_or_stay_finite(sae_dtype, lead, bad, seed, k):
    sae = sae_of(sae_dtype)
    x = make_x(lead, torch.float32, seed, 1.0)
    flat = x.view(-1, D_IN)
    g = torch.Generator().manual_seed(seed)
    flat[int(torch.randint(flat.shape[0], (1,), generator=g)), seed % D_IN] = bad
    with torch.no_grad():
        try:
            z = sae.encode(x, k=k)
        except NonFiniteActivationsError as exc:
            assert "rows" in str(exc)
            if not math.isfinite(bad):
                assert "NaN or inf" in str(exc)
        else:
            assert math.isfinite(bad)  # NaN/inf must never get through
            check_codes(z, lead, k, sae)


@FAST
@given(
    shape=st.one_of(
        st.just(()),
        st.lists(st.integers(0, 4), min_size=0, max_size=2).flatmap(
            lambda lead: st.integers(0, 2 * D_IN)
            .filter(lambda w: w != D_IN)
            .map(lambda w, lead=lead: (*lead, w))
        ),
    ),
)
def test_wrong_widths_raise_activation_shape_error(shape):
    sae = sae_of("float32")
    x = torch.zeros(shape)
    try:
        sae.encode(x)
    except ActivationShapeError as exc:
        assert f"d_in={D_IN}" in str(exc)
    else:
        raise AssertionError(f"shape {shape} was accepted")
    z = torch.zeros(shape)
    try:
        sae.decode(z)
    except ActivationShapeError as exc:
        assert f"d_sae={D_SAE}" in str(exc)
    else:
        if shape and shape[-1] == D_SAE:
            return
        raise AssertionError(f"decode accepted shape {shape}")


@FAST
@given(obj=st.sampled_from([None, 3.0, "x", [[0.0] * D_IN]]))
def test_non_tensors_and_complex_raise_activation_shape_error(obj):
    sae = sae_of("float32")
    for bad in (obj, torch.zeros(2, D_IN, dtype=torch.complex64)):
        try:
            sae.encode(bad)
        except ActivationShapeError as exc:
            assert "tensor" in str(exc)
        else:
            raise AssertionError(f"{type(bad).__name__} was accepted")


@FAST
@given(
    sae_dtype=st.sampled_from(SAE_DTYPES),
    in_dtype=st.sampled_from(INPUT_DTYPES),
    lead=lead_shapes,
    seed=st.integers(0, 2**16),
)
def test_decode_of_any_non_negative_codes_is_finite_with_right_shape(
    sae_dtype, in_dtype, lead, seed
):
    sae = sae_of(sae_dtype)
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(*lead, D_SAE, generator=g, dtype=torch.float64) * 3
    z = (z > 1.5) if in_dtype == torch.bool else z.to(in_dtype)
    with torch.no_grad():
        out = sae.decode(z)
    assert out.shape == (*lead, D_IN)
    assert out.dtype == sae.dtype
    assert torch.isfinite(out).all()
