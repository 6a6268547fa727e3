"""One table of timings on one device, ours against the peer library in the same run, as ratios: what a GPU session
runs (benchmarks/gpu_check.sh). Nothing in the project depends on it.

- the demo (`robustdistill demo --quick`, or the full one with --full-demo) on the device, end to end;
- AutoAttack standard (official settings: 100 iterations, Square 5000 queries, per-point worst case) on a batch of
  CIFAR-size images through a ResNet-18 (resnet18-cifar, untrained: a timing, not an accuracy), ours against the
  official code (pyautoattack), from the same inputs and seed;
- one GCG step on a small causal LM, ours against nanoGCG (benchmarks/gcg_vs_nanogcg.py's setup; skipped when
  nanogcg is not installed: pip install --no-deps nanogcg==0.2.3).

    python benchmarks/gpu_timings.py --device cuda                 # what gpu_check.sh runs
    python benchmarks/gpu_timings.py --device cpu --quick          # a smoke run on a CPU: small sizes, seconds
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_demo(device: str, full: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "robustdistill", "-q", "demo", "--device", device, "--out", f"{tmp}/reports"]
        started = time.perf_counter()
        subprocess.run(command + ([] if full else ["--quick"]), cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - started


def time_autoattack(device: torch.device, batch: int, steps: int, queries: int) -> tuple[float, float]:
    """(ours, official) seconds for AutoAttack standard on one batch of 3x32x32 images, L-inf 8/255."""
    from pyautoattack import AutoAttack

    from robustdistill import attacks
    from robustdistill.models.architectures import build_network

    torch.manual_seed(0)
    model = build_network("resnet18-cifar", num_classes=10, in_channels=3, input_size=32).to(device).eval()
    x = torch.rand(batch, 3, 32, 32, device=device)
    with torch.no_grad():
        y = model(x).argmax(dim=1)  # every point starts correctly classified, so every point is attacked
    eps = 8 / 255
    ours = attacks.create("autoattack", eps=eps, norm="linf", seed=0, steps=steps, n_queries=queries)
    synchronize(device)
    started = time.perf_counter()
    ours(model, x, y)
    synchronize(device)
    ours_seconds = time.perf_counter() - started
    official = AutoAttack(model, norm="Linf", eps=eps, seed=0, version="standard", device=str(device))
    official.verbose = False
    for attack in (official.apgd, official.apgd_targeted, official.fab):
        attack.n_iter = steps
    official.square.n_queries = queries
    synchronize(device)
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        official.run_standard_evaluation(x.clone(), y.clone(), batch_size=batch)
    synchronize(device)
    return ours_seconds, time.perf_counter() - started


def time_gcg_step(device: str, width: int, layers: int, steps: int) -> tuple[float, float] | None:
    """(ours, nanoGCG as shipped) seconds per GCG step; None without nanogcg."""
    if importlib.util.find_spec("nanogcg") is None:
        return None
    import gcg_vs_nanogcg as bench

    args = argparse.Namespace(steps=steps, search_width=512, topk=256)
    with tempfile.TemporaryDirectory() as tmp:
        lm = bench.build_model("llama", width, layers, 0, Path(tmp) / "lm")
    lm.to(device)
    init = bench.initial_suffix_text(lm)
    ours, _, _ = bench.run_ours(lm, args, 0)
    theirs, _ = bench.run_nanogcg(lm, args, 0, init, cache=False)
    return ours, theirs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes (a CPU smoke run)")
    parser.add_argument("--full-demo", action="store_true", help="time the full demo instead of --quick")
    parser.add_argument("--skip-demo", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    batch, steps, queries = (4, 5, 50) if args.quick else (256, 100, 5000)
    width, layers, gcg_steps = (32, 2, 2) if args.quick else (512, 8, 5)
    rows = []
    if not args.skip_demo:
        rows.append((f"demo{'' if args.full_demo else ' --quick'}", time_demo(args.device, args.full_demo), None))
    ours, official = time_autoattack(device, batch, steps, queries)
    rows.append((f"AutoAttack, ResNet-18, {batch} x 3x32x32, {steps} iterations", ours, official))
    gcg = time_gcg_step(args.device, width, layers, gcg_steps)
    if gcg is not None:
        rows.append((f"GCG step, llama {width} x {layers} layers, search width 512", *gcg))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\ntimings on {args.device} ({name}), torch {torch.__version__}\n")
    print("| check | ours (s) | peer (s) | peer / ours |")
    print("|---|---|---|---|")
    for label, seconds, peer in rows:
        ratio = f"{peer / seconds:.2f}" if peer is not None else "—"
        print(f"| {label} | {seconds:.2f} | {'—' if peer is None else f'{peer:.2f}'} | {ratio} |")
    if gcg is None:
        print("(GCG skipped: nanogcg is not installed; pip install --no-deps nanogcg==0.2.3)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
