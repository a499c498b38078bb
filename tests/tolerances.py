"""Error bounds measured against PyTorch's own low-precision error (FlashAttention's method).

A kernel output ``out`` passes when, elementwise-max over the tensor,
    |out - truth| <= factor * |torch_out - truth| + atol
where ``truth`` is the op computed in fp64 and ``torch_out`` is what plain PyTorch computes in the same low
precision. For fp32 inputs PyTorch's own error is ~1e-7, so ``atol`` (a few fp32 ulps of the output scale)
carries the bound.
"""


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_within_torch_error(out, truth, torch_out, *, factor=2.0, atol=None, name="output"):
    assert out.shape == truth.shape, f"{name}: shape {tuple(out.shape)} != {tuple(truth.shape)}"
    if atol is None:
        atol = 1e-5 * max(1.0, truth.abs().max().item() if truth.numel() else 1.0)
    err, base = max_err(out, truth), max_err(torch_out, truth)
    assert err <= factor * base + atol, (
        f"{name}: max error {err:.3e} exceeds {factor} x PyTorch's own error {base:.3e} + {atol:.1e}")
    return err, base
