"""The evaluation harness's records on disk and its summary tables (engine.evaluation.evaluate writes them).

    run.json        the settings of a run; a rerun with other settings is refused
    results.jsonl   one JSON line per finished clip, appended and flushed when the clip is done
    features/       I3D features per clip, for FVD
    summary.*       per σ_y and method: Time (median s per clip), PSNR, SSIM, LPIPS, FVD × 1e-3
    sweep.*         with --sweep-nfe: the sampler's PSNR / SSIM / time against K per start, the baselines beside
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
import statistics
from pathlib import Path

import numpy as np

from engine.errors import InputError
from engine.evaluation.metrics_extra import FVD_SCALE, frechet_distance
from engine.fileio import atomic_file, atomic_write_json, atomic_write_text
from engine.metrics import json_safe

log = logging.getLogger(__name__)

#: What a run writes into its folder (and --overwrite removes).
OWN_OUTPUTS = ("run.json", "results.jsonl", "summary.md", "summary.csv", "summary.json", "sweep.md", "sweep.csv",
               "sweep.json", "features", "pictures")


def plural(n: int, noun: str) -> str:
    """'1 clip', '2 clips'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def psnr_value(v) -> float:
    """A PSNR read back from JSON: null stands for +inf (a frame equal to its reference)."""
    return math.inf if v is None else v


class Results:
    """results.jsonl (one JSON line per finished clip) and features/<clip>.npz in the output folder."""

    def __init__(self, out: Path):
        self.path = out / "results.jsonl"
        self.features = out / "features"
        self.records = self._read()

    def _read(self) -> list[dict]:
        """The finished clips; a torn last line (a run killed while writing it) is dropped from the file."""
        if not self.path.exists():
            return []
        lines = self.path.read_text().splitlines(keepends=True)
        records = []
        for i, line in enumerate(lines):
            try:
                records.append(json.loads(line))
            except ValueError:
                if i < len(lines) - 1:
                    raise InputError(f"{self.path}: line {i + 1} is not JSON; fix or delete the file") from None
                log.warning("%s: dropping an incomplete last line", self.path)
                self.path.write_text("".join(lines[:-1]))
                return records
        if lines and not lines[-1].endswith("\n"):  # whole record, newline not yet written
            self.path.write_text("".join(lines) + "\n")
        return records

    def done(self) -> set[str]:
        return {r["clip"] for r in self.records}

    def add(self, record: dict, features: dict) -> None:
        """Save the clip's features, then append its line (flushed to disk): the line marks it done."""
        if features:
            self.features.mkdir(parents=True, exist_ok=True)
            with atomic_file(self.features / f"{record['clip']}.npz") as tmp:
                np.savez(tmp, **features)
        with open(self.path, "a") as f:
            f.write(json.dumps(json_safe(record)) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records.append(record)


def open_run(out: Path, settings: dict, overwrite: bool) -> Results:
    """Create or resume the run in `out`: InputError if it holds a run with other settings."""
    path = out / "run.json"
    if overwrite:
        for name in OWN_OUTPUTS:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
    if path.exists():
        old = json.loads(path.read_text())
        changed = [f"{k}: {old.get(k)!r} → {v!r}" for k, v in settings.items() if old.get(k) != v]
        if changed:
            raise InputError(f"{out} holds a run with other settings ({'; '.join(changed)}); "
                             "use another --out or pass --overwrite")
    else:
        atomic_write_json(path, settings)
    return Results(out)


# ----------------------------------------------------------------------------- summary


def summarize(results: Results, settings: dict) -> list[dict]:
    """One row per (σ_y, method): clips, median seconds, mean PSNR / SSIM / LPIPS over clips, FVD × 1e-3."""
    rows = []
    for sigma in settings["sigma_y"]:
        for method in settings["methods"]:
            runs = [r for rec in results.records for r in rec["runs"] if r["method"] == method and r["sigma_y"] == sigma]
            if not runs:
                continue
            lpips = [r["lpips_mean"] for r in runs] if settings["lpips"] else None
            rows.append({
                "sigma_y": sigma, "method": method, "clips": len(runs),
                "time_s": statistics.median(r["seconds"] for r in runs),
                "psnr": statistics.fmean(psnr_value(r["psnr_mean"]) for r in runs),
                "ssim": statistics.fmean(r["ssim_mean"] for r in runs),
                "lpips": statistics.fmean(lpips) if lpips else None,
                "fvd": _fvd(results, f"{method}@{sigma:g}") if settings["fvd"] else None,
            })
    return rows


def _fvd(results: Results, key: str) -> float | None:
    """FVD × 1e-3 between the clean and restored clips' I3D features over all clips (None under 2 clips)."""
    feats = [np.load(results.features / f"{r['clip']}.npz") for r in results.records]
    if len(feats) < 2:
        log.warning("FVD needs at least 2 clips; reported as n/a")
        return None
    clean = np.stack([f["clean"] for f in feats])
    restored = np.stack([f[key] for f in feats])
    return frechet_distance(clean, restored) * FVD_SCALE


COLUMNS = (("time_s", "Time [s]", "{:.2f}"), ("psnr", "PSNR ↑", "{:.2f}"), ("ssim", "SSIM ↑", "{:.4f}"),
           ("lpips", "LPIPS ↓", "{:.4f}"), ("fvd", "FVD×1e-3 ↓", "{:.3f}"))


def _cell(value, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def summary_markdown(rows: list[dict], settings: dict, skipped: dict[str, str] | None = None) -> str:
    """The paper's layout: per σ_y, one row per method with Time, PSNR, SSIM, LPIPS, FVD; then the
    sequences that could not be read (`skipped`: name → reason)."""
    clips = max((r["clips"] for r in rows), default=0)
    lines = [f"# {settings['task']} (`{settings['spec']}`), {plural(clips, 'clip')}", "",
             f"Prior: {settings['prior']}. K = {settings['nfe']}, η = {settings['eta']}, l = {settings['cg_iters']}, "
             f"seed {settings['seed']}, {settings['device']}. Time: median seconds per clip; PSNR, SSIM, LPIPS: "
             "means over clips of the per-frame means; FVD over all clips, × 1e-3 as in the paper.", ""]
    for sigma in settings["sigma_y"]:
        block = [r for r in rows if r["sigma_y"] == sigma]
        if not block:
            continue
        lines += [f"## σ_y = {sigma:g} ({noise_note(sigma, settings)})", "",
                  "| Method | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
                  "| --- |" + " ---: |" * len(COLUMNS)]
        lines += [f"| {r['method']} | " + " | ".join(_cell(r[k], f) for k, _, f in COLUMNS) + " |" for r in block]
        lines.append("")
    if skipped:
        lines += [f"## Skipped: {plural(len(skipped), 'sequence')} that could not be read", ""]
        lines += [f"- {name}: {reason}" for name, reason in sorted(skipped.items())] + [""]
    return "\n".join(lines)


def summary_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["sigma_y", "method", "clips", *(k for k, _, _ in COLUMNS)])
    for r in rows:
        writer.writerow([r["sigma_y"], r["method"], r["clips"], *(_cell(r[k], "{!r}") for k, _, _ in COLUMNS)])
    return buf.getvalue()


def write_summary(out: Path, rows: list[dict], settings: dict, skipped: dict[str, str] | None = None) -> None:
    """summary.md, summary.csv and summary.json, each written atomically (`skipped`: unreadable sequences)."""
    skipped = skipped or {}
    texts = {"summary.md": summary_markdown(rows, settings, skipped), "summary.csv": summary_csv(rows),
             "summary.json": json.dumps(json_safe({"settings": settings, "rows": rows, "skipped": skipped}),
                                        indent=1) + "\n"}
    for name, text in texts.items():
        atomic_write_text(out / name, text)


# ----------------------------------------------------------------------------- the NFE sweep

#: a sweep point's columns: (key, title, format)
SWEEP_COLUMNS = (("psnr", "PSNR ↑", "{:.2f}"), ("ssim", "SSIM ↑", "{:.4f}"), ("time_s", "Time [s]", "{:.2f}"))


def sweep_rows(rows: list[dict], points: dict[str, tuple]) -> list[dict]:
    """The summary rows of a --sweep-nfe run as sweep points: `points` maps a row's name to
    (method, K, t₀) (t₀ None: cold); a row not in it is a baseline (K and t₀ None)."""
    out = []
    for r in rows:
        method, nfe, start = points.get(r["method"], (r["method"], None, None))
        out.append({"sigma_y": r["sigma_y"], "method": method, "nfe": nfe, "start": start, "clips": r["clips"],
                    **{k: r[k] for k, _, _ in SWEEP_COLUMNS}})
    return out


def _start_name(start) -> str:
    return "cold" if start is None else f"warm t₀ = {start}"


def noise_note(sigma: float, settings: dict) -> str:
    """How the sampler treats noise level σ_y: the noiseless CG, or the regularised one with its γ."""
    if sigma == 0:
        return "noiseless, the paper's protocol"
    return f"regularised CG, γ = {dict(zip(settings['sigma_y'], settings['gammas']))[sigma]:g}"


def sweep_markdown(points: list[dict], settings: dict) -> str:
    """Per σ_y and column (PSNR, SSIM, time): a table with one row per K and one column per (method, start),
    then the baselines."""
    clips = max((p["clips"] for p in points), default=0)
    lines = [f"# NFE sweep: {settings['task']} (`{settings['spec']}`), {plural(clips, 'clip')}", "",
             (f"Prior: {settings['prior']}. η = {settings['eta']}, l = {settings['cg_iters']}, seed {settings['seed']}, "
              f"{settings['device']}. PSNR, SSIM: means over clips of the per-frame means; time: median seconds per "
              f"clip. The baselines run once (cg: K·l iterations at K = {settings['nfe']})."), ""]
    for sigma in settings["sigma_y"]:
        block = [p for p in points if p["sigma_y"] == sigma]
        swept = [p for p in block if p["nfe"] is not None]
        if not block:
            continue
        lines += [f"## σ_y = {sigma:g} ({noise_note(sigma, settings)})", ""]
        columns = list(dict.fromkeys((p["method"], p["start"]) for p in swept))
        cells = {(p["nfe"], p["method"], p["start"]): p for p in swept}
        for key, title, fmt in SWEEP_COLUMNS:
            lines += [f"{title.split()[0]}:", "",
                      "| K | " + " | ".join(f"{m} {_start_name(t)}" for m, t in columns) + " |",
                      "| ---: |" + " ---: |" * len(columns)]
            for k in sorted({p["nfe"] for p in swept}):
                lines.append(f"| {k} | " + " | ".join(_cell(cells[k, m, t][key], fmt) if (k, m, t) in cells else "n/a"
                                                      for m, t in columns) + " |")
            lines.append("")
        baselines = [p for p in block if p["nfe"] is None]
        if baselines:
            lines += ["| Baseline | " + " | ".join(title for _, title, _ in SWEEP_COLUMNS) + " |",
                      "| --- |" + " ---: |" * len(SWEEP_COLUMNS)]
            lines += [f"| {p['method']} | " + " | ".join(_cell(p[k], f) for k, _, f in SWEEP_COLUMNS) + " |"
                      for p in baselines]
            lines.append("")
    return "\n".join(lines)


def sweep_csv(points: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["sigma_y", "method", "nfe", "start", "clips", *(k for k, _, _ in SWEEP_COLUMNS)])
    for p in points:
        writer.writerow([p["sigma_y"], p["method"], "" if p["nfe"] is None else p["nfe"],
                         "cold" if p["start"] is None and p["nfe"] is not None else p["start"] or "", p["clips"],
                         *(_cell(p[k], "{!r}") for k, _, _ in SWEEP_COLUMNS)])
    return buf.getvalue()


def write_sweep(out: Path, points: list[dict], settings: dict) -> None:
    """sweep.md, sweep.csv and sweep.json (the points and the settings), each written atomically."""
    texts = {"sweep.md": sweep_markdown(points, settings), "sweep.csv": sweep_csv(points),
             "sweep.json": json.dumps(json_safe({"settings": settings, "points": points}), indent=1) + "\n"}
    for name, text in texts.items():
        atomic_write_text(out / name, text)
