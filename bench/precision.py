"""Training-step throughput of ResNet-32 on this CPU by precision, memory layout and compilation.

    contenders  fp32 / bf16 autocast  x  NCHW / channels_last  (x torch.compile with --compile)

Every contender is the harness's own model (harness.models.build_model) with the same initial
weights, an SGD step on the same batch of 128 CIFAR-sized images, in one process, alternating
step by step (A B C D, then D C B A, ...): the machine's noise falls on all of them alike. The
median step time of each counts. With --compile, the compiled contenders also report their
compile time (the first steps) and the number of epochs after which compiling pays for itself.

Prints a table and the ratios to fp32 NCHW; writes bench/results/precision.json.

    python bench/precision.py [--batch 128] [--steps 6] [--rounds 3] [--compile] [--threads N]
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from harness.files import atomic_write_json  # noqa: E402
from harness.models import build_model  # noqa: E402
from harness.run.wrap import bf16_pays, cpu_info, native_bf16  # noqa: E402

STEPS_PER_EPOCH = 97  # CIFAR-10-LT at IF 100 (12406 images) at batch 128


class Contender:
    def __init__(self, name: str, model: torch.nn.Module, bf16: bool, channels_last: bool, compile: bool):
        self.name, self.bf16, self.channels_last, self.compiled = name, bf16, channels_last, compile
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model
        self.net = torch.compile(self.model) if compile else self.model
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
        self.times: list[float] = []
        self.first_s: float | None = None

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        t0 = time.perf_counter()
        x = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            logits, _ = self.net(x)
        loss = F.cross_entropy(logits.float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet32", help="a registered model (the learning tests use resnet8_narrow)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=6, help="timed steps per contender per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per contender first")
    p.add_argument("--compile", action="store_true", help="also the torch.compile'd contenders")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "precision.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = build_model(args.model, 10, "linear")
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    combos = [(bf16, cl, comp) for comp in ((False, True) if args.compile else (False,))
              for bf16 in (False, True) for cl in (False, True)]
    contenders = [Contender(f"{'bf16' if bf16 else 'fp32'} {'channels_last' if cl else 'NCHW'}"
                            + (" compiled" if comp else ""), copy.deepcopy(base), bf16, cl, comp)
                  for bf16, cl, comp in combos]
    for c in contenders:  # warm-up (and, compiled, the compilation itself)
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            c.step(x, y)
        c.first_s = time.perf_counter() - t0
    for r in range(args.rounds):
        order = contenders if r % 2 == 0 else contenders[::-1]
        for _ in range(args.steps):
            for c in order:
                c.times.append(c.step(x, y))
    ref = statistics.median(contenders[0].times)
    rows = []
    for c in contenders:
        med = statistics.median(c.times)
        row = {"name": c.name, "bf16": c.bf16, "channels_last": c.channels_last, "compiled": c.compiled,
               "median_step_s": med, "images_per_s": args.batch / med, "ratio_to_fp32_nchw": ref / med,
               "warmup_s": c.first_s}
        rows.append(row)
    for row in rows:  # compiling pays after this many epochs (against the same precision and layout, eager)
        if row["compiled"]:
            eager = next(r for r in rows if not r["compiled"] and r["bf16"] == row["bf16"]
                         and r["channels_last"] == row["channels_last"])
            gain = (eager["median_step_s"] - row["median_step_s"]) * STEPS_PER_EPOCH
            extra = row["warmup_s"] - eager["warmup_s"]
            row["compile_s"] = extra
            row["break_even_epochs"] = extra / gain if gain > 0 else None
    vendor, flags = cpu_info()
    print(f"{args.model}, batch {args.batch}, {args.threads} threads, {vendor or 'CPU'} with native bf16: "
          f"{native_bf16()}, AMX: {'amx_bf16' in flags}, auto takes bf16: {bf16_pays(vendor, flags)}; "
          f"median of {args.steps * args.rounds} steps each, alternating")
    print(f"{'contender':<32}{'img/s':>8}{'vs fp32 NCHW':>14}")
    for row in rows:
        extra = ""
        if row["compiled"]:
            be = row["break_even_epochs"]
            extra = f"   compile {row['compile_s']:.0f} s, pays after {be:.1f} epochs" if be else \
                f"   compile {row['compile_s']:.0f} s, never pays"
        print(f"{row['name']:<32}{row['images_per_s']:>8.0f}{row['ratio_to_fp32_nchw']:>14.2f}{extra}")
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                          "vendor": vendor, "native_bf16": native_bf16(), "amx_bf16": "amx_bf16" in flags,
                          "auto_takes_bf16": bf16_pays(vendor, flags), "load_average": os.getloadavg()},
              "config": vars(args), "steps_per_epoch_assumed": STEPS_PER_EPOCH, "contenders": rows}
    atomic_write_json(args.out, result, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
