"""Video inverse problems with an image diffusion prior (Kwon & Ye, ICLR 2025).

Modules, in the order data flows through them:

- `engine.unet`, `engine.checkpoint`: the ADM UNet and its checkpoint loader.
- `engine.schedule`: the linear-β diffusion schedule and the DDIM step pairs.
- `engine.operators`: the degradations A, their adjoints Aᵀ and normal operators AᵀA.
- `engine.cg`: fixed-iteration conjugate gradients in video space.
- `engine.sampler`: the paper's Algorithm 1 (batch-consistent DDIM + CG).
- `engine.priors`: a weight-free ε model for machines without a checkpoint.
"""

__version__ = "0.1.0"
