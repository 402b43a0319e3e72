"""Video inverse problems with an image diffusion prior (Kwon & Ye, ICLR 2025).

Modules, in the order data flows through them:

- `engine.video_io`, `engine.testclips`: clips in and out, test clips; `engine.fileio`: atomic writes.
- `engine.unet`, `engine.checkpoint`: the ADM UNet and its checkpoint loader.
- `engine.schedule`: the linear-β diffusion schedule and the DDIM step pairs.
- `engine.operators`, `engine.tasks`: the degradations A, Aᵀ, AᵀA and the paper's six tasks.
- `engine.cg`: fixed-iteration conjugate gradients in video space.
- `engine.sampler`: the paper's Algorithm 1 (batch-consistent DDIM + CG); `engine.triton_steps`: its step
  arithmetic on the Triton launchers of `kernels.steps`; `engine.profiling`: its NVTX ranges.
- `engine.blind`: its Algorithm 2 (an unknown temporal PSF, fitted to a first reconstruction).
- `engine.priors`: a weight-free ε model for machines without a checkpoint.
- `engine.backends`, `engine.runtime`, `engine.streams`: how the network runs (`engine.backends.engine_file`:
  the TensorRT engine file and its record); the embeddable `Solver`.
- `engine.baselines`, `engine.metrics`, `engine.figures`: comparisons, scores, pictures.
- `engine.evaluation`: the evaluation harness (`evaluate`, `data`, `report`, `metrics_extra`).
- Command lines: `engine.solve` (restore a clip; `--blind` for Algorithm 2), `engine.evaluate` (the paper's tables),
  `engine.data` (prepare DAVIS), `engine.build` (ONNX and TensorRT; the code is `export.build`).
"""

__version__ = "0.1.0"
