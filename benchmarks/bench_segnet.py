"""Inference speed of the distilled segmentation UNet on 224² crops (CPU by default).

Measures, for each input mode (3 = image, 6 = image + render) and UNet width:

* ms per crop at batch 1 (median of ``--repeats`` timed calls after warm-up), through
  :meth:`fitem.segnet.SegNet.predict` (numpy in → probability out, the path ``segment`` and
  ``fit(segnet=)`` use);
* images/s at batch 8 and 32 (``--batches``) through ``predict``;
* on CUDA also the net alone on crops already on the device (no host copies, synchronised),
  in float32 and under bfloat16 autocast, images/s per batch size.

Weights do not change the speed, so freshly initialised nets are timed (``--net`` times a
checkpoint instead).

Usage: ``python benchmarks/bench_segnet.py [--bases 8,16] [--threads 2] [--repeats 30]``
Prints a table and writes ``benchmarks/results/bench_segnet.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch


def _time(fn, repeats: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bases", default="8,16", help="UNet widths to time (comma-separated)")
    ap.add_argument("--modes", default="3,6", help="input channels to time")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", default="8,32")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--net", help="time this checkpoint instead of fresh nets")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_segnet.json"))
    args = ap.parse_args()
    from fitem.segnet.net import SegNet, UNet, load_segnet

    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    nets = []
    if args.net:
        sn = load_segnet(args.net, device=args.device)
        nets.append(sn)
    else:
        for base in (int(b) for b in args.bases.split(",")):
            for ch in (int(c) for c in args.modes.split(",")):
                net = UNet(ch, base=base).eval().to(args.device).to(memory_format=torch.channels_last)
                nets.append(SegNet(net, args.size, {}))
    rows = []
    for sn in nets:
        s = sn.crop_size
        n_params = sum(p.numel() for p in sn.net.parameters())
        row = {"in_channels": sn.in_channels, "base": sn.net.base, "levels": sn.net.levels, "crop": s,
               "parameters": n_params}

        def call(b):
            img = rng.random((b, s, s, 3), dtype=np.float32)
            ren = rng.random((b, s, s, 3), dtype=np.float32) if sn.in_channels == 6 else None
            return lambda: sn.predict(img, ren)

        t1 = _time(call(1), args.repeats)
        row["ms_per_image_batch1_median"] = 1000 * float(np.median(t1))
        row["ms_per_image_batch1_min"] = 1000 * float(np.min(t1))
        for b in (int(x) for x in args.batches.split(",")):
            tb = _time(call(b), max(3, args.repeats // max(1, b // 4)), warmup=1)
            row[f"images_per_second_batch{b}"] = b / float(np.median(tb))
        if sn.device.type == "cuda":
            for b in (int(x) for x in args.batches.split(",")):
                x = torch.rand(b, sn.in_channels, s, s, device=sn.device).contiguous(memory_format=torch.channels_last)
                for name, dtype in (("float32", None), ("bf16", torch.bfloat16)):
                    def on_device(x=x, dtype=dtype):
                        with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                            torch.sigmoid(sn.net(x))
                        torch.cuda.synchronize()
                    tb = _time(on_device, max(5, args.repeats // 2), warmup=3)
                    row[f"images_per_second_batch{b}_on_device_{name}"] = b / float(np.median(tb))
        rows.append(row)
        print(f"in={row['in_channels']} base={row['base']:>2} params={n_params / 1e6:.2f}M  "
              f"batch1 {row['ms_per_image_batch1_median']:.1f} ms (min {row['ms_per_image_batch1_min']:.1f})  " +
              "  ".join(f"b{b}: {row[f'images_per_second_batch{b}']:.0f} img/s" for b in args.batches.split(",")),
              flush=True)
    out = {
        "benchmark": "segnet_inference",
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "device": args.device,
                    "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else None},
        "load_average": os.getloadavg(),
        "repeats": args.repeats, "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
