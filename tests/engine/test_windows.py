"""Windows with pinned context and the streaming restorer (engine.windows)."""

import pytest
import torch
import torch.nn.functional as F

from engine import memory
from engine.errors import InputError
from engine.operators import from_spec
from engine.operators.temporal import temporal_matrix, uniform_kernel
from engine.priors import GaussianPrior
from engine.runtime import SolverConfig
from engine.sampler import sample
from engine.operators.kronecker import DEFAULT_BOUNDARY, TemporalTerm, frame_matrix
from engine.windows import VideoRestorer, plan_window, split_spec

F64 = torch.float64
PRIOR = GaussianPrior()
SETTINGS = dict(nfe=4, eta=0.15, cg_iters=3)


def restorer(spec, frame, *, window=None, memory_budget=None, lag=None, lead=None, **config):
    """VideoRestorer(PRIOR, SolverConfig(spec, size=frame, **config), …) in float64."""
    cfg = SolverConfig(spec=spec, size=frame, **config)
    return VideoRestorer(PRIOR, cfg, window=window, memory_budget=memory_budget, lag=lag, lead=lead, dtype=F64)


def restored(r, y, seed=0):
    return torch.stack(list(r.restore(y, seed=seed)))


def smooth_video(n, h, w, seed=0):
    """A smooth random video in [0, 1]: low-pass noise moving slowly.  [n, 3, h, w] float64"""
    g = torch.Generator().manual_seed(seed)
    base = F.interpolate(torch.rand(1, 3, h // 4, w // 4, generator=g, dtype=F64), size=(h, w), mode="bilinear")
    drift = torch.linspace(0, 0.3, n, dtype=F64).view(n, 1, 1, 1)
    return (0.7 * base + drift * torch.rand(1, 3, 1, 1, generator=g, dtype=F64)).clamp(0, 1)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


# ── the frame matrix and the window operator ────────────────────────────────

def test_frame_matrix_is_the_engines_zero_boundary_matrix():
    term = TemporalTerm(torch.tensor([0.1, 0.5, 0.3, 0.1], dtype=F64), "zero")   # even width: c = 1, ℓ = 2
    assert torch.equal(frame_matrix(term, (0, 11), (0, 11), end=11), temporal_matrix(term.kernel, 11, "zero"))


def test_frame_matrix_replicate_is_convolution_of_the_edge_padded_video():
    k = torch.tensor([0.2, 0.5, 0.3], dtype=F64)
    term, n = TemporalTerm(k, "replicate"), 9
    x = torch.randn(n, 5, dtype=F64)
    padded = torch.cat([x[:1].expand(1, 5), x, x[-1:].expand(1, 5)])             # [n + 2, 5]
    expected = sum(k[j] * padded[2 - j:2 - j + n] for j in range(3))            # y[n] = Σ_j k[j] x[n + 1 − j]
    assert torch.allclose(frame_matrix(term, (0, n), (0, n), end=n) @ x, expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("spec", ["temporal:uniform:7", "temporal:gaussian:1.0:zero+sr:3", "inpaint:0.4",
                                  "blur:gaussian:1.5:5+temporal:kernel:0.2,0.5,0.3"])
def test_window_operator_dot_test(spec):
    """⟨A z, v⟩ = ⟨z, Aᵀ v⟩ and AᵀA = Aᵀ(A) for a window with pinned frames, odd sizes, fp64."""
    r = restorer(spec, (9, 15))
    win = plan_window(r.term, 10, 20, last=True)
    T = frame_matrix(r.term, win.rows, (win.context, win.stop), end=20)
    op = r._operator(T[:, win.start - win.context:])                    # the free frames' columns
    g = torch.Generator().manual_seed(0)
    z = torch.randn(op.in_shape, generator=g, dtype=F64)
    v = torch.randn(op.out_shape, generator=g, dtype=F64)
    lhs, rhs = (op.A(z) * v).sum(), (z * op.A_adjoint(v)).sum()
    assert abs(lhs - rhs) <= 1e-12 * op.A(z).norm() * v.norm()
    assert torch.allclose(op.A_adjoint_A(z), op.A_adjoint(op.A(z)), rtol=0, atol=1e-12)


def test_window_preconditioner_inverts_the_regularised_system():
    """A window's CG preconditioner is (I + γ g T_winᵀT_win)⁻¹ ⊗ I for the regularised system (g = ‖SᵀS‖ = 1/4
    for 2× SR): applied after I + γ AᵀA it gives back any clip spread evenly over each pooling cell."""
    from engine.cg import preconditioner

    r = restorer("temporal:uniform:7:replicate+sr:2", (6, 8))
    win = plan_window(r.term, 6, 15, last=False, lag=6)
    op = r._operator(frame_matrix(r.term, win.rows, (win.context, win.stop), end=None)[:, win.start - win.context:])
    P = preconditioner(op, 2.0, device="cpu", dtype=F64)
    z = torch.rand(op.in_shape[0], 3, 3, 4, dtype=F64).repeat_interleave(2, -1).repeat_interleave(2, -2)
    assert torch.allclose(P(z + 2.0 * op.A_adjoint_A(z)), z, rtol=0, atol=1e-12)
    assert op.normal_gain == pytest.approx(float(torch.linalg.eigvalsh(op.normal_matrix)[-1]) / 4)


@pytest.mark.parametrize("window,lag,lead", [(5, 0, 0), (8, 6, 1), (9, 3, 0), (16, 12, 3), (22, 18, 3)])
def test_pinned_frames_enter_as_known_terms(window, lag, lead):
    """Every window's rows of y = A x equal A_win x[free] + the pinned frames' term, exactly; rows cover y,
    and the yielded frames [first, commit) tile the video."""
    r = restorer("temporal:uniform:7:replicate+sr:2", (6, 8), window=window, lag=lag, lead=lead)
    n = 23
    x = torch.rand(n, 3, 6, 8, dtype=F64)
    y = r.operator(n).A(x)
    start, first, covered, yielded = 0, 0, set(), []
    while first < n:
        stop = min(start + window, n)
        win = plan_window(r.term, start, stop, last=stop == n, lag=lag, first=first)
        T = frame_matrix(r.term, win.rows, (win.context, win.stop), end=n if win.last else None)
        P = start - win.context
        known = r._operator(T[:, :P]).A(x[win.context:start]) if P else 0
        assert torch.allclose(r._operator(T[:, P:]).A(x[start:stop]) + known, y[win.rows[0]:win.rows[1]],
                              rtol=0, atol=1e-13)
        covered |= set(range(*win.rows))
        yielded += range(win.first, win.commit)
        first, start = win.commit, max(0, win.commit - lead)
    assert covered == set(range(n))
    assert yielded == list(range(n))


@pytest.mark.parametrize("start", [None, 600])
def test_whole_video_path_is_the_engines_operator_and_sampler(start):
    """One window over the whole video (zero boundary) is `engine.sampler.sample` on from_spec's operator,
    cold or from a warm start t₀."""
    spec, n, frame = "temporal:uniform:5:zero+inpaint:0.3", 11, (8, 12)
    x = smooth_video(n, *frame)
    op = from_spec(spec, (n, 3, *frame), dtype=F64, kernels="torch")
    y = op.A(x)
    r = restorer(spec, frame, gamma=2.0, start=start, **SETTINGS)
    assert torch.allclose(r.operator(n).A(x), y, rtol=0, atol=1e-14)
    expected = sample(PRIOR, y, op, nfe=4, eta=0.15, cg_iters=3, gamma=2.0, seed=3,   # preconditioned, as windows
                      start=start)
    assert torch.allclose(restored(r, y, seed=3), expected, rtol=0, atol=1e-10)


# ── windows against the whole video ─────────────────────────────────────────

@pytest.mark.parametrize("spec,gamma,start", [("inpaint:0.5", None, None), ("inpaint:0.5", 2.0, None),
                                              ("sr:2", 1.0, None), ("sr:2", None, None), ("sr:2", 1.0, 500),
                                              ("inpaint:0.5", None, 500)])
def test_frame_local_windows_equal_the_whole_video(spec, gamma, start):
    """A frame-local A whose CG converges in one step (AᵀA has two eigenvalues): windows are exact (fp64),
    cold or each window warm from t₀ (its CG estimate is then exact too)."""
    n, frame = 13, (8, 8)
    x = smooth_video(n, *frame)
    op = from_spec(spec, (n, 3, *frame), dtype=F64, kernels="torch")
    y = op.A(x)
    whole = sample(PRIOR, y, op, nfe=4, eta=0.15, cg_iters=2, gamma=gamma, seed=5, start=start)
    for window in (1, 4, 13):
        r = restorer(spec, frame, window=window, gamma=gamma, start=start, **{**SETTINGS, "cg_iters": 2})
        assert torch.allclose(restored(r, y, seed=5), whole, rtol=0, atol=1e-10), window


def clip_and_measurement(n=24, size=16, sigma_y=0.02):
    """The astronaut photo panned, `n` frames of size², and its measurement blurred over 7 frames (held ends)."""
    from engine.testclips import camera_clip
    pytest.importorskip("skimage")
    x = camera_clip("astronaut", frames=n, size=size, dtype=F64)
    op = restorer("temporal:uniform:7:replicate", (size, size)).operator(n)
    noise = torch.randn(op.out_shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    return x, op.A(x) + sigma_y * noise


def psnr(a, ref):
    return (10 * torch.log10(1 / ((a - ref) ** 2).mean())).item()


def frame_psnr(a, ref):
    return 10 * torch.log10(1 / ((a - ref) ** 2).flatten(1).mean(1))


TEMPORAL = dict(nfe=10, eta=0.15, cg_iters=5, gamma=1.0)


def test_planned_windows_come_within_a_third_of_a_db_of_the_whole_video():
    """Temporal blur k = 7, σ_y = 0.01 (γ = 4), 48 frames: windows of W = 32 planned from a memory budget, with
    the default lag 3(w − 1) and lead ⌈(w − 1)/2⌉, lose at most 0.3 dB PSNR against the whole-video solve and
    no frame loses over 3 dB; with the lag w − 1 and no lead a frame before the seam does (measured: no loss
    and 0.2 dB at worst; 0.11 dB and 4.2 dB).

    Why not exact: a window's open end leaves modes only the prior fills, which pull on frames about
    3(w − 1) before it (engine.windows; docs/results.md, "Windows", measures it on real clips)."""
    x, y = clip_and_measurement(n=48, sigma_y=0.01)
    settings = dict(nfe=8, gamma=4.0)
    whole = restored(restorer("temporal:uniform:7:replicate", (16, 16), **settings), y)
    budget = (32 + 6) * 15 * 3 * 16 * 16 * 8                       # W + w − 1 frames of WINDOW_BUFFERS in fp64 (no motion prior)
    planned = restorer("temporal:uniform:7:replicate", (16, 16), memory_budget=budget, **settings)
    assert planned.window == 32
    windows = restored(planned, y)
    former = restored(restorer("temporal:uniform:7:replicate", (16, 16), window=32, lag=6, lead=0, **settings), y)
    assert psnr(windows, x) >= psnr(whole, x) - 0.3
    assert (frame_psnr(windows, x) - frame_psnr(whole, x)).min() >= -3
    assert (frame_psnr(former, x) - frame_psnr(whole, x)).min() < -3


def test_a_budget_counts_the_motion_prior_as_the_planner_does():
    """memory_budget turns into W with the buffers engine.memory.plan counts: the motion prior's on top."""
    budget = (48 + 6) * 15 * 3 * 16 * 16 * 8
    plain = restorer("temporal:uniform:7:replicate", (16, 16), memory_budget=budget, nfe=1)
    motion = restorer("temporal:uniform:7:replicate", (16, 16), memory_budget=budget, nfe=1, temporal_prior="motion")
    assert plain.window == 48
    assert motion.window == budget // ((memory.WINDOW_BUFFERS + memory.MOTION_BUFFERS) * 3 * 16 * 16 * 8) - 6 < 48


def test_same_seed_same_video_for_two_window_sizes():
    """The shared noise comes from the seed alone, so the video is a deterministic function of (seed, W, L, O):
    a second run is identical, another seed differs, and W = 10 and W = 16 (lag w − 1, no lead) agree within
    15 % (relative ℓ²) and 1 dB PSNR (two seeds of the whole-video solve differ by 0.10 dB here, so the bound
    is about the posterior's own spread under this weak prior)."""
    x, y = clip_and_measurement()
    spec = "temporal:uniform:7:replicate"
    a = restored(restorer(spec, (16, 16), window=10, lag=6, lead=0, **TEMPORAL), y, seed=4)
    b = restored(restorer(spec, (16, 16), window=16, lag=6, lead=0, **TEMPORAL), y, seed=4)
    again = restored(restorer(spec, (16, 16), window=10, lag=6, lead=0, **TEMPORAL), y, seed=4)
    other_seed = restored(restorer(spec, (16, 16), window=10, lag=6, lead=0, **TEMPORAL), y, seed=5)
    assert torch.equal(a, again)
    assert rel(a, other_seed) > 1e-3
    assert rel(a, b) <= 0.15
    assert abs(psnr(a, x) - psnr(b, x)) <= 1.0


# ── streaming ───────────────────────────────────────────────────────────────

def counted(frames, reads: list):
    """The frames one at a time, each index appended to `reads` as it is pulled."""
    for i, frame in enumerate(frames):
        reads.append(i)
        yield frame


def test_streaming_yields_in_order_with_bounded_buffering():
    """Frames come out in order, equal to the list result, while at most W + c + 1 measurement frames
    are read ahead of the frames yielded, and the restorer holds at most W + c + 1 + O + (w − 1) frames."""
    n, frame, window = 29, (8, 8), 9
    spec = "temporal:uniform:5:replicate"
    x = smooth_video(n, *frame)
    r = restorer(spec, frame, window=window, lag=4, lead=2, gamma=1.0, **SETTINGS)
    y = r.operator(n).A(x)
    reads = []
    out = []
    for k, f in enumerate(r.restore(counted(y, reads))):
        out.append(f)
        assert len(reads) - k <= window + r.term.centre + 1
    term = r.term
    assert len(out) == n
    assert r.frames_held_peak <= window + term.centre + 1 + r.lead + term.context
    assert torch.equal(torch.stack(out), restored(restorer(spec, frame, window=window, lag=4, lead=2, gamma=1.0,
                                                           **SETTINGS), y))


def test_a_video_shorter_than_a_window_and_an_empty_one():
    r = restorer("temporal:uniform:3", (8, 8), window=8, **SETTINGS)
    assert restored(r, torch.rand(2, 3, 8, 8, dtype=F64)).shape == (2, 3, 8, 8)
    assert list(r.restore(iter([]))) == []


def test_a_windows_motion_prior_sees_its_rows_as_measured(monkeypatch):
    """Each window's flow reads the rows as measured, not y' (the rows less the pinned frames' share): on a still
    video every frame it is given is the still frame, the window's first frames too."""
    import engine.windows as windows

    seen, real = [], windows.MotionPrior

    def spy(op, y, frames, gamma, **options):
        seen.append(frames.clone())
        return real(op, y, frames, gamma, **options)

    monkeypatch.setattr(windows, "MotionPrior", spy)
    still = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(7)).expand(40, -1, -1, -1)
    cfg = SolverConfig(spec="temporal:uniform:3:replicate", size=8, nfe=1, gamma=4.0, temporal_prior="motion")
    restorer = VideoRestorer(GaussianPrior(), cfg, window=12)
    y = torch.stack(list(restorer.measure(still)))
    assert len(list(restorer.restore(y))) == 40 and len(seen) > 2
    for frames in seen:
        assert torch.allclose(frames, still[:frames.shape[0]], atol=1e-5)


# ── bad input: one clear line each ──────────────────────────────────────────

@pytest.mark.parametrize("settings,match", [
    (dict(window=3, lag=0, lead=0), "at least 4 \\(more than the temporal PSF's reach 3"),
    (dict(window=21), "at least 22 .*the lag 18 plus the lead 3"),
    (dict(memory_budget=10_000), "memory budget of 10000 bytes"),
    (dict(window=20, memory_budget=10**9), "not both"),
    (dict(window=20, lead=-1), "the lead must be an integer number of frames ≥ 0, got -1"),
    (dict(window=20, lag=2.5), "the lag must be an integer"),
])
def test_window_too_short_is_refused(settings, match):
    with pytest.raises(InputError, match=match):
        restorer("temporal:uniform:7", (16, 16), **settings)


def test_independent_noise_is_refused():
    with pytest.raises(InputError, match="shared noise image only"):
        restorer("inpaint:0.5", (8, 8), window=4, noise="independent")


def test_circular_boundary_is_refused():
    with pytest.raises(InputError, match="circular boundary wraps"):
        restorer("temporal:uniform:7:circular", (16, 16), window=16)


def test_unknown_boundary_and_two_temporal_terms_are_refused():
    with pytest.raises(InputError, match="unknown temporal boundary"):
        split_spec("temporal:uniform:7:mirror")
    with pytest.raises(InputError, match="at most one"):
        split_spec("temporal:uniform:3+temporal:uniform:5")
    assert split_spec("temporal:uniform:3+sr:2")[0].boundary == DEFAULT_BOUNDARY
    assert torch.equal(split_spec("sr:2+temporal:uniform:3")[0].kernel, uniform_kernel(3))


def test_mismatched_frame_size_is_refused():
    r = restorer("temporal:uniform:3+sr:2", (8, 8), window=8, **SETTINGS)
    frames = [torch.rand(3, 4, 4, dtype=F64)] * 5 + [torch.rand(3, 4, 5, dtype=F64)]
    with pytest.raises(InputError, match=r"measurement frame 5 has shape \(3, 4, 5\); expected \(3, 4, 4\)"):
        list(r.restore(frames))


def test_non_finite_frame_is_refused():
    r = restorer("inpaint:0.5", (8, 8), window=4, **SETTINGS)
    with pytest.raises(InputError, match="frame 2 contains NaN"):
        list(r.restore([torch.rand(3, 8, 8)] * 2 + [torch.full((3, 8, 8), float("nan"))]))


def test_streaming_measurement_is_the_whole_video_operator():
    """measure() frame by frame equals A x of the whole video (replicate ends), reading at most c + 1 frames
    ahead of the frames it yields; with σ_y the same seed gives the same noise."""
    n, frame = 17, (8, 8)
    r = restorer("temporal:uniform:7:replicate+sr:2", frame, **SETTINGS)
    x = smooth_video(n, *frame)
    reads = []
    out = []
    for k, f in enumerate(r.measure(counted(x, reads))):
        out.append(f)
        assert len(reads) - k <= r.term.centre + 1
    assert torch.allclose(torch.stack(out), r.operator(n).A(x), rtol=0, atol=1e-14)
    noisy = torch.stack(list(r.measure(x, sigma_y=0.1, seed=2)))
    assert torch.equal(noisy, torch.stack(list(r.measure(x, sigma_y=0.1, seed=2))))
    assert 0.05 < (noisy - r.operator(n).A(x)).std() < 0.15


def test_window_quality_bench_runs_and_knows_the_seams(capsys):
    """bench.window_quality on a tiny panned photo prints a pinned and an open row, and its seams are the
    first frames the restorer's windows after the first yield."""
    pytest.importorskip("skimage")
    from bench import window_quality

    argv = ["--clip", "photo:astronaut", "--frames", "40", "--size", "16", "--crf", "-1", "--windows", "24",
            "--nfe", "2", "--unpinned"]
    assert window_quality.main(argv) == 0
    out = capsys.readouterr().out
    assert "W  24 lag 18 lead  3 pinned" in out and "W  24 lag 18 lead  3 open" in out

    firsts = []

    class Recorded(VideoRestorer):
        def _plan(self, start, stop, last, first):
            firsts.append(first)
            return super()._plan(start, stop, last, first)

    r = Recorded(PRIOR, SolverConfig(spec="temporal:uniform:7:replicate", size=(8, 8), nfe=2), window=24)
    assert len(restored(r, torch.rand(40, 3, 8, 8))) == 40
    assert window_quality.seams(40, 24, r.lag, r.lead) == firsts[1:] and len(firsts) > 2
