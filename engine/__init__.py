"""Video inverse problems with an image diffusion prior (Kwon & Ye, ICLR 2025).

Modules, in the order data flows through them:

- `engine.video_io`, `engine.data`, `engine.testclips`: clips in and out, DAVIS preparation, test clips.
- `engine.unet`, `engine.checkpoint`: the ADM UNet and its checkpoint loader.
- `engine.schedule`: the linear-β diffusion schedule and the DDIM step pairs.
- `engine.operators`, `engine.tasks`: the degradations A, Aᵀ, AᵀA and the paper's six tasks.
- `engine.cg`: fixed-iteration conjugate gradients in video space.
- `engine.sampler`: the paper's Algorithm 1 (batch-consistent DDIM + CG).
- `engine.blind`: its Algorithm 2 (an unknown temporal PSF, fitted to a first reconstruction).
- `engine.priors`: a weight-free ε model for machines without a checkpoint.
- `engine.backends`, `engine.runtime`: how the network runs; the embeddable `Solver`.
- `engine.baselines`, `engine.metrics`, `engine.metrics_extra`, `engine.figures`, `engine.report`: comparisons, scores, tables.
- Command lines: `engine.solve` (restore a clip; `--blind` for Algorithm 2), `engine.evaluate` (the paper's tables),
  `engine.build` (ONNX and TensorRT), `engine.data` (prepare DAVIS).
"""

__version__ = "0.1.0"
