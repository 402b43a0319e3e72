"""Triton kernels for the degradations, the CG solver and the DDIM step (docs/design.md, "Kernels").

One file per family, each kernel in three layers (a private `_name_kernel`, a launcher
that checks inputs, allocates the output and sets the grid, and the torch-facing
function with the signature of its torch reference):

- `temporal`: the temporal PSF A, Aᵀ and AᵀA along frames, one pass each, and the
  frame mixing that the fused normal operators of compositions build on;
- `blur`: the separable spatial blur and its exact adjoint and normal operator
  (one banded pass per image axis);
- `pool`: s×s average pooling (super-resolution), its adjoint and normal operator;
- `mask`: the inpainting mask;
- `compose`: one-pass AᵀA of a temporal PSF composed with pooling or a mask;
- `cg`: conjugate gradients with on-device dot products and step sizes;
- `steps`: Tweedie and the DDIM update (engine.triton_steps adapts them to the sampler);
- `groupnorm`: the UNet's GroupNorm with ADM's scale-shift and SiLU fused (two passes;
  x and y contiguous or channels_last).

Tensors are contiguous [N, C, H, W] (channels_last too for `groupnorm`) in float32, float64, float16 or bfloat16; the
arithmetic runs in float32 (float64 for float64 data). CPU tensors run in Triton's
interpreter when TRITON_INTERPRET=1 is set before this package is imported.
"""
