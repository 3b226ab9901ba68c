"""``fitem distill`` and ``fitem segment``: thin wrappers that map flags onto :mod:`fitem.segnet`."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from fitem.errors import FitemError

__all__ = ["register"]

log = logging.getLogger("fitem")


def _cmd_distill(args: argparse.Namespace) -> int:
    from fitem.segnet.train import distill

    report = distill(args.annotation_dir, args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                     in_channels=args.in_channels, base=args.base, device=args.device,
                     val_fraction=args.val_fraction, seed=args.seed, rounds=args.rounds, work_dir=args.work_dir,
                     n_jobs=args.jobs, progress=not args.quiet)
    if args.report:
        from fitem._files import atomic_write_bytes

        atomic_write_bytes(Path(args.report), json.dumps(report.as_dict(), indent=1).encode())
    print(report.table())
    print(f"wrote {args.out} ({report.n_train} training / {report.n_val} validation crops of "
          f"{report.crop_size}², {report.seconds:.0f} s)")
    return 0


def _cmd_segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from fitem._files import atomic_write_bytes, png_bytes
    from fitem.image import load_image, to_uint8
    from fitem.segnet.infer import segment
    from fitem.segnet.net import load_segnet

    net = load_segnet(args.net, device=args.device)
    out = Path(args.out)
    failures = 0
    for path in tqdm(args.images, desc="segmenting", unit="image", disable=args.quiet):
        try:
            image = load_image(path)
            seg = segment(image, net=net, landmarks=args.landmarks, threshold=args.threshold, device=args.device)
            stem = Path(path).stem
            atomic_write_bytes(out / f"{stem}_mask.png", png_bytes(seg.mask.astype("uint8") * 255))
            atomic_write_bytes(out / f"{stem}_prob.png", png_bytes(to_uint8(seg.probability)))
            atomic_write_bytes(out / f"{stem}_overlay.png", png_bytes(seg.overlay(image)))
        except FitemError as exc:
            failures += 1
            log.error("%s: %s", path, exc)
    done = len(args.images) - failures
    print(f"wrote mask, probability and overlay PNGs of {done} image(s) under {out}" +
          (f"; {failures} failed (see messages above)" if failures else ""))
    return 1 if failures else 0


def register(subparsers) -> None:
    """Add ``distill`` and ``segment`` to the ``fitem`` command's sub-parsers.

    Example:
        >>> p = argparse.ArgumentParser(); sub = p.add_subparsers(dest="command")
        >>> register(sub)
        >>> p.parse_args(["segment", "a.png", "--net", "n.pt", "--out", "o"]).command
        'segment'
    """
    d = subparsers.add_parser("distill", help="train a segmentation net on the masks of a `fitem annotate` folder")
    d.add_argument("annotation_dir", help="output folder of `fitem annotate`")
    d.add_argument("--out", required=True, help="checkpoint to write (e.g. net.pt)")
    d.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    d.add_argument("--batch-size", type=int, default=16, help="crops per step (default 16)")
    d.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    d.add_argument("--in-channels", type=int, choices=[3, 6], default=3,
                   help="3: image only; 6: image + the fit's initial render (default 3)")
    d.add_argument("--base", type=int, default=8, help="UNet width of the first level (default 8)")
    d.add_argument("--val-fraction", type=float, default=0.1, help="held-out share for validation (default 0.1)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="cpu", help="torch device (default cpu)")
    d.add_argument("--rounds", type=int, default=0,
                   help="self-training rounds: re-annotate with the net as the EM's prior, distil again (default 0)")
    d.add_argument("--work-dir", help="folder for the rounds' annotations and nets (default NET_rounds/)")
    d.add_argument("--jobs", type=int, default=1, help="parallel fits when re-annotating in rounds")
    d.add_argument("--report", help="also write the report as JSON here")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=_cmd_distill)

    s = subparsers.add_parser("segment", help="segment the visible face of images with a distilled net")
    s.add_argument("images", nargs="+", help="image files")
    s.add_argument("--net", required=True, help="checkpoint written by `fitem distill`")
    s.add_argument("--out", required=True, help="output folder (NAME_mask.png, NAME_prob.png, NAME_overlay.png)")
    s.add_argument("--landmarks", help="a .pts file of 68 landmarks (single image only)")
    s.add_argument("--threshold", type=float, default=0.5, help="probability threshold of the mask (default 0.5)")
    s.add_argument("--device", default="cpu", help="torch device (default cpu)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_segment)
