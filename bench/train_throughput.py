"""Training throughput: tuneloop's training path vs the common Trainer recipe, side by side.

One process, one run, same data, model, steps and hardware:
- tuneloop: `tuneloop.train.build_trainer` as `tuneloop train` uses it (pre-tokenised, dynamic
  padding, length-grouped batches, fused AdamW, bf16/TF32 and a large batch on CUDA);
- baseline: a plain transformers Trainer with what most tutorials do: fp32, every text padded to
  max length 128, batch 32, transformers' default optimizer (fused AdamW in 5.24) and learning rate.

Prints JSON: samples/s after warm-up, real (non-padding) tokens/s, model FLOPs utilisation (MFU), peak
memory, final validation macro-F1 (both sides after the same number of training samples: each takes
`--samples / batch` steps), and the ratios.

MFU = real tokens/s x training FLOPs per token (6 x non-embedding parameters + 12 x layers x hidden x mean
length, the attention term) / peak FLOP/s: the datasheet's dense bf16 peak for a known GPU (H100/H200
989 TFLOP/s, A100 312), else a matmul peak measured here in the same run (fp32 on a CPU), or --peak-tflops.

`--nproc N` adds tuneloop's path as N data-parallel processes (torchrun, gloo on a CPU, NCCL on GPUs)
beside 1 process, each in a fresh process, and reports the speed-up. On a CPU the N processes share the
same cores (each gets cores/N threads), so the speed-up there measures DDP's overhead, not scaling.

    python bench/train_throughput.py --data ../shared/data/banking77/train.csv --samples 1920
    python bench/train_throughput.py --data ../shared/data/sst2/train.csv --samples 256000 --nproc 1  # H200
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


class PeakMemory:
    """Peak memory of a run: CUDA allocator peak on GPU, sampled process RSS on CPU (MiB)."""

    def __init__(self, cuda: bool):
        self.cuda, self.peak, self._stop = cuda, 0, threading.Event()

    def __enter__(self) -> PeakMemory:
        import torch

        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            import psutil

            proc = psutil.Process()
            self.base = proc.memory_info().rss

            def sample() -> None:
                while not self._stop.wait(0.05):
                    self.peak = max(self.peak, proc.memory_info().rss - self.base)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.cuda:
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()

    @property
    def mib(self) -> float:
        return round(self.peak / 2**20, 1)


def split(data: Path, workdir: Path, seed: int, val_rows: int) -> tuple[Path, Path]:
    """Stratified train/val split of a text,label CSV with tuneloop's own splitter."""
    from tuneloop.prepare import stratified_split
    from tuneloop.tabular import read_table

    frame = read_table(data).frame.dropna(subset=["text", "label"])
    parts = stratified_split(frame, min(0.5, val_rows / len(frame)), 0.0, seed)
    paths = (workdir / "train.csv", workdir / "val.csv")
    parts["train"].to_csv(paths[0], index=False)
    parts["val"].to_csv(paths[1], index=False)
    return paths


# Dense bf16 peaks from the vendors' datasheets (TFLOP/s per device, no sparsity).
GPU_PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10G": 70.0, "L4": 121.0}


def peak_tflops(cuda: bool, measure_s: float = 2.0) -> tuple[float, str]:
    """Peak FLOP/s of one device: the datasheet's for a known GPU, else a square matmul measured here."""
    import torch

    if cuda:
        name = torch.cuda.get_device_name()
        for key, peak in GPU_PEAK_TFLOPS.items():
            if key in name:
                return peak, f"datasheet dense bf16 ({key})"
    dtype, device = (torch.bfloat16, "cuda") if cuda else (torch.float32, "cpu")
    n = 4096 if cuda else 1024
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < measure_s:
        a @ b
        runs += 1
        if cuda:
            torch.cuda.synchronize()
    return round(2 * n**3 * runs / (time.perf_counter() - started) / 1e12, 3), f"measured {dtype} matmul {n}"


def train_flops_per_token(model, mean_tokens: float) -> float:
    """Forward + backward FLOPs per token: 6 x non-embedding parameters + the attention score/value matmuls."""
    config = model.config
    embeddings = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    dense = sum(p.numel() for p in model.parameters()) - embeddings
    return 6 * dense + 12 * config.num_hidden_layers * config.hidden_size * mean_tokens


def run_tuneloop(params, train_csv: Path, val_csv: Path, base: str, max_steps: int, workdir: Path) -> dict:
    import torch

    from tuneloop.train import build_trainer

    trainer, info = build_trainer(params, train_csv, val_csv, base, workdir / "ckpt-tuneloop", max_steps=max_steps)
    trainer.args.eval_strategy = "no"  # timing covers training only; evaluate once at the end
    trainer.args.save_strategy = "no"
    trainer.args.load_best_model_at_end = False
    trainer.callback_handler.callbacks = [
        c for c in trainer.callback_handler.callbacks if type(c).__name__ != "EarlyStoppingCallback"
    ]
    with PeakMemory(torch.cuda.is_available()) as memory:
        trainer.train()
    throughput = info["throughput"]
    metrics = trainer.evaluate()
    tokens = info["real_tokens_per_sample"]
    return {
        "samples_per_second": round(throughput.samples_per_second, 1),
        "real_tokens_per_second": round(throughput.samples_per_second * tokens, 1),
        "train_tflops": round(
            throughput.samples_per_second * tokens * train_flops_per_token(trainer.model, tokens) / 1e12, 4
        ),
        "peak_memory_mib": memory.mib,
        "val_macro_f1": round(metrics["eval_macro_f1"], 4),
        "batch_size": info["batch_size"],
        "steps": trainer.state.global_step,
        "samples": trainer.state.global_step * info["batch_size"],
        "processes": int(os.environ.get("WORLD_SIZE", "1")),
    }


def run_baseline(train_csv: Path, val_csv: Path, base: str, max_steps: int, seed: int, workdir: Path) -> dict:
    """The common recipe, written as a tutorial would: nothing from tuneloop but the timer."""
    import pandas as pd
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        PrinterCallback,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from tuneloop.train import ThroughputCallback, macro_f1_metrics

    train_df, val_df = pd.read_csv(train_csv), pd.read_csv(val_csv)
    labels = sorted(train_df["label"].astype(str).unique())
    label2id = {label: i for i, label in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(base)
    set_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=len(labels))

    class Padded(torch.utils.data.Dataset):
        def __init__(self, frame):
            enc = tokenizer(frame["text"].astype(str).tolist(), padding="max_length", truncation=True, max_length=128)
            self.enc, self.y = enc, [label2id[str(v)] for v in frame["label"]]
            self.real_tokens = sum(sum(m) for m in enc["attention_mask"])

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return {**{k: torch.tensor(v[i]) for k, v in self.enc.items()}, "labels": torch.tensor(self.y[i])}

    train_ds, val_ds = Padded(train_df), Padded(val_df[val_df["label"].astype(str).isin(label2id)])
    timer = ThroughputCallback(32)
    cuda = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(workdir / "ckpt-baseline"),
        per_device_train_batch_size=32,
        per_device_eval_batch_size=32,
        max_steps=max_steps,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        seed=seed,
        use_cpu=not cuda,
        disable_tqdm=True,
        logging_steps=max(1, max_steps // 5),
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        compute_metrics=macro_f1_metrics,
        callbacks=[timer],
    )
    trainer.remove_callback(PrinterCallback)  # keep stdout for the JSON result
    with PeakMemory(cuda) as memory:
        trainer.train()
    metrics = trainer.evaluate()
    tokens = train_ds.real_tokens / len(train_ds)
    return {
        "samples_per_second": round(timer.samples_per_second, 1),
        "real_tokens_per_second": round(timer.samples_per_second * tokens, 1),
        "train_tflops": round(timer.samples_per_second * tokens * train_flops_per_token(model, tokens) / 1e12, 4),
        "peak_memory_mib": memory.mib,
        "val_macro_f1": round(metrics["eval_macro_f1"], 4),
        "batch_size": 32,
        "steps": trainer.state.global_step,
        "samples": trainer.state.global_step * 32,
    }


def worker(args: argparse.Namespace) -> None:
    """One tuneloop run (alone or as one rank under torchrun); rank 0 writes its result to --worker-out."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    from tuneloop.config import load_params
    from tuneloop.model import resolve_base_model

    params = load_params(args.params, args.overrides)
    train_csv, val_csv = args.workdir / "train.csv", args.workdir / "val.csv"
    steps = max(1, args.samples // tuneloop_batch(params))
    result = run_tuneloop(params, train_csv, val_csv, resolve_base_model(args.base), steps, args.workdir)
    if int(os.environ.get("RANK", "0")) == 0:
        args.worker_out.write_text(json.dumps(result))


def tuneloop_batch(params) -> int:
    import torch

    return params.train.cuda_batch_size if torch.cuda.is_available() else params.train.batch_size


def run_processes(nproc: int, argv: list[str], out: Path) -> dict:
    """This script in worker mode as `nproc` processes (torchrun when > 1), each in a fresh interpreter."""
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    subprocess.run([*launcher, __file__, *argv, "--worker-out", str(out)], check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def without_nproc(argv: list[str]) -> list[str]:
    kept, skip = [], False
    for arg in argv:
        if skip or arg.startswith("--nproc="):
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        kept.append(arg)
    return kept


def with_mfu(run: dict, peak: float, devices: int) -> dict:
    return run | {"mfu": round(run["train_tflops"] / (peak * devices), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="any text,label CSV")
    parser.add_argument("--samples", type=int, default=1920, help="training samples for each side (steps x batch)")
    parser.add_argument("--nproc", type=int, default=0, help="also run tuneloop's path as N DDP processes")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="peak TFLOP/s of one device for MFU")
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--base", default="minilm", help="base model (default: the packaged MiniLM-L6)")
    parser.add_argument("--val-rows", type=int, default=1000, help="validation rows split off the data")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="tuneloop param override")
    parser.add_argument("--workdir", type=Path, default=Path("build/bench-train"))
    args = parser.parse_args()
    if args.worker_out:
        worker(args)
        return

    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    from tuneloop.config import load_params
    from tuneloop.model import resolve_base_model

    params = load_params(args.params, args.overrides)
    args.workdir.mkdir(parents=True, exist_ok=True)
    train_csv, val_csv = split(args.data, args.workdir, params.base.seed, args.val_rows)
    base = resolve_base_model(args.base)
    cuda = torch.cuda.is_available()
    peak, peak_source = (args.peak_tflops, "--peak-tflops") if args.peak_tflops else peak_tflops(cuda)
    started = time.time()
    argv = without_nproc(sys.argv[1:])  # torchrun would take a script's --nproc for its own --nproc-per-node
    # Each side in a fresh process, tuneloop first then the common recipe, as before in one process.
    tuneloop = with_mfu(run_processes(1, argv, args.workdir / "tuneloop-1.json"), peak, 1)
    parallel = None
    if args.nproc > 1:
        parallel = run_processes(args.nproc, argv, args.workdir / f"tuneloop-{args.nproc}.json")
        parallel = with_mfu(parallel, peak, args.nproc if cuda else 1)  # CPU processes share one machine's peak
    baseline_steps = max(1, args.samples // 32)
    baseline = with_mfu(run_baseline(train_csv, val_csv, base, baseline_steps, params.base.seed, args.workdir), peak, 1)
    result = {
        "data": str(args.data),
        "device": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "samples": args.samples,
        "peak_tflops_per_device": peak,
        "peak_source": peak_source,
        "tuneloop": tuneloop,
        "baseline_common_recipe": baseline,
        "ratio_samples_per_second": round(
            tuneloop["samples_per_second"] / max(baseline["samples_per_second"], 1e-9), 2
        ),
        "ratio_real_tokens_per_second": round(
            tuneloop["real_tokens_per_second"] / max(baseline["real_tokens_per_second"], 1e-9), 2
        ),
        "macro_f1_delta": round(tuneloop["val_macro_f1"] - baseline["val_macro_f1"], 4),
        "wall_s": round(time.time() - started, 1),
    }
    if parallel is not None:
        result[f"tuneloop_{args.nproc}_processes"] = parallel
        result["ddp_speedup_samples_per_second"] = round(
            parallel["samples_per_second"] / max(tuneloop["samples_per_second"], 1e-9), 2
        )
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
