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
- `engine.noise`, `engine.temporal_prior`, `engine.polish`, `engine.realvideo`: what a real (measured) video
  needs: its noise estimated, the blur's null modes chosen along motion, a last denoise, the input guard.
- `engine.priors`: a weight-free ε model for machines without a checkpoint.
- `engine.backends`, `engine.runtime`, `engine.streams`: how the network runs (`engine.backends.engine_file`:
  the TensorRT engine file and its record); the embeddable `Solver`.
- `engine.baselines`, `engine.metrics`, `engine.figures`: comparisons, scores, pictures.
- `engine.evaluation`: the evaluation harness (`evaluate`, `data`, `report`, `metrics_extra`).
- `engine.job`, `engine.job_input`, `engine.job_checks`, `engine.runners`, `engine.output`: one restoration job
  (read INPUT, fit the config, run it whole, in windows or over torchrun's processes, write the outputs).
- Command lines: `engine.solve` (restore a clip; `--blind` for Algorithm 2), `engine.evaluate` (the paper's tables),
  `engine.data` (prepare DAVIS), `engine.build` (ONNX and TensorRT; the code is `export.build`).

The public API, importable from `engine` itself (loaded on first use, so `import engine` stays light):

    from engine import Solver, SolverConfig, VideoRestorer, load_model, load_adm, make_prior, from_spec
    from engine import Job, run                    # a whole job, as python -m engine.solve runs it
"""

__version__ = "0.1.0"

#: public name → the module that defines it
_PUBLIC = {
    "Solver": "engine.runtime", "SolverConfig": "engine.runtime", "load_model": "engine.runtime",
    "measure": "engine.runtime", "VideoRestorer": "engine.windows", "load_adm": "engine.checkpoint",
    "make_prior": "engine.priors", "PRIORS": "engine.priors", "from_spec": "engine.operators",
    "estimate_noise": "engine.noise", "InputError": "engine.errors", "Job": "engine.job", "run": "engine.runners",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_PUBLIC[name]), name)


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
