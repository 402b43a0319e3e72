"""What each process of tests/engine/test_distributed.py runs (engine.distributed.run_local spawns them).

A worker gets (rank, world, *args) inside an initialised default process group (gloo, 127.0.0.1)
and returns a small value picklable by value (arrays as numpy).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from engine.cg import data_consistency, preconditioner
from engine.distributed import Comm, gather_frames
from engine.operators import from_spec
from engine.operators.kronecker import KroneckerOperator
from engine.sampler import draw_noise, reverse_process
from engine.schedule import ddim_steps, warm_start

SPECS = ["temporal:uniform:7", "temporal:uniform:7:replicate", "temporal:uniform:7+sr:4",
         "temporal:gaussian:1.0+blur:gaussian:1.0:5", "temporal:uniform:5:replicate+inpaint:0.5",
         "sr:2", "temporal:uniform:3+temporal:kernel:0.2,0.5,0.3:zero"]


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def operator_errors(rank, world, frames, specs=SPECS):
    """{spec: largest relative error of this rank's rows} against the single-process operator, fp64:
    A, Aᵀ, AᵀA, the preconditioner, l = 5 (P)CG steps noiseless and regularised, and the dot test."""
    shape = (frames, 3, 8, 8)
    comm = Comm(frames)
    a, b = comm.shard.start, comm.shard.stop
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=gen, dtype=torch.float64)
    out = {}
    for spec in specs:
        full, sharded = from_spec(spec, shape, kernels="torch"), KroneckerOperator.from_spec(spec, shape, comm=comm)
        y = torch.rand(full.out_shape, generator=gen, dtype=torch.float64)
        errors = [_rel(sharded.A(x[a:b]), full.A(x)[a:b]), _rel(sharded.A_adjoint(y[a:b]), full.A_adjoint(y)[a:b]),
                  _rel(sharded.A_adjoint_A(x[a:b]), full.A_adjoint_A(x)[a:b])]
        for gamma in (None, 1.0):
            P_full, P_sharded = preconditioner(full, gamma), preconditioner(sharded, gamma)
            assert (P_full is None) == (P_sharded is None)
            if P_full is not None:
                errors.append(_rel(P_sharded(x[a:b]), P_full(x)[a:b]))
            errors.append(_rel(data_consistency(sharded, y[a:b], x[a:b], 5, gamma, precond=P_sharded),
                               data_consistency(full, y, x, 5, gamma, precond=P_full)[a:b]))
        lhs = sharded.inner(sharded.A(x[a:b]), y[a:b])                 # ⟨A x, y⟩ = ⟨x, Aᵀ y⟩ over all ranks
        rhs = sharded.inner(x[a:b], sharded.A_adjoint(y[a:b]))
        errors.append(float(abs(lhs - rhs) / abs(lhs)))
        out[spec] = max(errors)
    return out


def sampler_error(rank, world, frames, spec, gamma, start):
    """(relative error of this rank's frames, of the gathered video on rank 0, the single-process run's own
    change when y changes by 1e-16 relative) for Algorithm 1 (fp64, a frame-local ε model, preconditioned
    CG, `start` for a warm start) against the single-process run."""
    shape = (frames, 3, 8, 8)
    comm = Comm(frames)
    a, b = comm.shard.start, comm.shard.stop
    gen = torch.Generator().manual_seed(1)
    full = from_spec(spec, shape, kernels="torch")
    y = full.A(torch.rand(shape, generator=gen, dtype=torch.float64))
    sharded = KroneckerOperator.from_spec(spec, shape, comm=comm)

    def eps(x, t):                                              # per frame, as a network is
        return 0.4 * x + 0.1 * torch.tanh(x) * (t.to(x.dtype).view(-1, 1, 1, 1) / 1000)

    nfe = 4
    E = draw_noise(3, nfe, shape).to(torch.float64)
    steps, warm = ddim_steps(nfe, 0.15, start=start), warm_start(start, 5)

    def one_process(y):
        return reverse_process(eps, y, full, E, steps, cg_iters=5, gamma=gamma, precond=preconditioner(full, gamma),
                               warm=warm)

    ref = one_process(y)
    nudged = y * (1 + 1e-16 * torch.randn(y.shape, generator=gen, dtype=torch.float64))   # rounding-sized change
    sensitivity = _rel(one_process(nudged), ref)
    got = reverse_process(eps, y[a:b], sharded, E, steps, cg_iters=5, gamma=gamma,
                          precond=preconditioner(sharded, gamma), warm=warm)
    whole = gather_frames(got, comm)
    return _rel(got, ref[a:b]), (None if whole is None else _rel(whole, ref)), sensitivity


def build_sharded(rank, world, frames, spec):
    """Builds the operator only (for the refusals)."""
    KroneckerOperator.from_spec(spec, (frames, 3, 8, 8), comm=Comm(frames))
    return "built"


def failing_rank(rank, world, frames):
    """Rank 1 raises before the CG; the others enter it and must not wait forever."""
    shape = (frames, 3, 8, 8)
    comm = Comm(frames)
    op = KroneckerOperator.from_spec("temporal:uniform:3", shape, comm=comm)
    if rank == 1:
        raise RuntimeError("rank 1 fails on purpose")
    x = torch.rand(op.in_shape, dtype=torch.float64)
    return float(data_consistency(op, op.A(x), x, 5).sum())


def solver_frames(rank, world, frames, noise):
    """This rank's frames restored by Solver(group=WORLD) (fp32, weight-free prior, measured with σ_y)."""
    from engine.priors import make_prior
    from engine.runtime import Solver, SolverConfig

    cfg = SolverConfig("temporal:uniform:5:replicate+sr:2", frames=frames, size=(8, 12), nfe=3, noise=noise,
                       gamma=1.0, start=600)
    solver = Solver(make_prior("gaussian"), cfg, group=dist.group.WORLD)
    clean = torch.rand(cfg.shape, generator=torch.Generator().manual_seed(4))
    s = solver.shard
    y = solver.measure(clean[s.start:s.stop], sigma_y=0.05, seed=7)
    return s.start, s.stop, y.numpy(), solver.solve(y, seed=2).numpy()     # by value: a shared tensor dies with us


def solver_kernels(rank, world):
    """(what a Solver(group=WORLD) asked for the Triton kernels runs, its operator's kernels)."""
    from engine.priors import make_prior
    from engine.runtime import Solver, SolverConfig

    cfg = SolverConfig("temporal:uniform:3", frames=4, size=8, nfe=2, cg_iters=1, kernels="triton")
    solver = Solver(make_prior("gaussian"), cfg, group=dist.group.WORLD)
    return solver.kernels_used, solver.op.kernels


def _frame_local_eps(x, t):
    """A per-frame ε model, as a network is (no weights)."""
    return 0.4 * x + 0.1 * torch.tanh(x) * (t.to(x.dtype).view(-1, 1, 1, 1) / 1000)


def window_operator_errors(rank, world, spec, rows, cols, end):
    """Largest relative error of a window's operator sharded (rows whole) against it on one process (fp64)
    over A, Aᵀ, AᵀA, the preconditioner and 5 PCG steps, and the dot test ⟨A x, y⟩ = ⟨x, Aᵀ y⟩ with x
    sharded, y whole."""
    from engine.operators.kronecker import frame_matrix
    from engine.windows import split_spec

    term, spatial_spec = split_spec(spec)
    frame = (8, 12)
    T = frame_matrix(term, rows, cols, end)
    spatial = from_spec(spatial_spec, (1, 3, *frame), kernels="torch", dtype=torch.float64) if spatial_spec else None
    full = KroneckerOperator(T, spatial, (3, *frame), dtype=torch.float64)
    comm = Comm(T.shape[1])
    a, b = comm.shard.start, comm.shard.stop
    sharded = full.sharded(comm, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(full.in_shape, generator=gen, dtype=torch.float64)
    y = torch.rand(full.out_shape, generator=gen, dtype=torch.float64)
    errors = [_rel(sharded.A(x[a:b]), full.A(x)), _rel(sharded.A_adjoint(y), full.A_adjoint(y)[a:b]),
              _rel(sharded.A_adjoint_A(x[a:b]), full.A_adjoint_A(x)[a:b])]
    for gamma in (None, 1.0):
        P_full, P_sharded = preconditioner(full, gamma), preconditioner(sharded, gamma)
        errors.append(_rel(P_sharded(x[a:b]), P_full(x)[a:b]))
        errors.append(_rel(data_consistency(sharded, y, x[a:b], 5, gamma, precond=P_sharded),
                           data_consistency(full, y, x, 5, gamma, precond=P_full)[a:b]))
    lhs = float((sharded.A(x[a:b]) * y).sum())
    rhs = float(sharded.inner(x[a:b], sharded.A_adjoint(y)))
    errors.append(abs(lhs - rhs) / abs(lhs))
    return max(errors), sharded.in_shape[0]


def windows_restored(rank, world, frames, spec, window, start):
    """(rank 0's restored video or the frame count another rank yielded, windows split over the group) of
    VideoRestorer(group=WORLD) in fp64 on a measured smooth random video."""
    from engine.runtime import SolverConfig
    from engine.windows import VideoRestorer

    cfg = SolverConfig(spec=spec, size=(8, 12), nfe=3, gamma=1.0, start=start)
    restorer = VideoRestorer(None, cfg, window=window, eps_model=_frame_local_eps, dtype=torch.float64,
                             group=dist.group.WORLD)
    clean = torch.rand((frames, 3, 8, 12), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = list(restorer.restore(restorer.measure(clean, sigma_y=0.05, seed=3), seed=5))
    return (torch.stack(out).numpy() if rank == 0 else len(out)), restorer.windows_split


def read_on_first(rank, world, clip):
    """(decoded here?, the frame count and size every process learns) of engine.runners.sharded.read_on_first."""
    import engine.runners.sharded as sharded
    from engine.solve import parse

    job, _, _ = parse([clip, "--simulate", "--degrade", "temporal:uniform:3", "--out", "unused"])
    decoded = []
    real = sharded.input_frames
    sharded.input_frames = lambda job: decoded.append(rank) or real(job)
    clean, notes, frames, shape = sharded.read_on_first(job, rank)
    return bool(decoded), clean is not None, frames, shape


def halo_errors_in_nccl_order(rank, world, frames):
    """Under NCCL's matching (tests/helpers/nccl_order.py): {case: largest |error|} of Comm.halo against the video's own
    frames, for a ring and for open ends, equal and unequal reaches; then operator_errors for circular and
    replicate boundaries. Returns (halo errors, operator errors, point-to-point operations seen)."""
    from nccl_order import nccl_matching

    video = torch.arange(frames, dtype=torch.float64).view(frames, 1, 1).expand(frames, 2, 3).contiguous()
    video = video + 0.25 * torch.arange(6, dtype=torch.float64).view(1, 2, 3)       # every value distinct
    comm = Comm(frames)
    a, b = comm.shard.start, comm.shard.stop
    halos = {}
    with nccl_matching() as seen:
        for ring in (True, False):
            for lo, hi in ((2, 2), (3, 0), (0, 2), (1, 3)):
                got = comm.halo(video[a:b], lo, hi, ring)
                rows = [((i % frames) if ring else i) for i in range(a - lo, b + hi)]
                want = torch.stack([video[i] if 0 <= i < frames else torch.zeros_like(video[0]) for i in rows])
                case = f"ring={ring} lo={lo} hi={hi}"
                halos[case] = float((got - want).abs().max()) if got.shape == want.shape else float("inf")
                if halos[case] != 0:                 # stop before an exchange that no longer pairs up hangs
                    return halos, {}, seen.operations
        specs = ["temporal:uniform:7", "temporal:uniform:7:replicate", "temporal:uniform:5:replicate+sr:2"]
        operators = operator_errors(rank, world, frames, specs)
    return halos, operators, seen.operations
