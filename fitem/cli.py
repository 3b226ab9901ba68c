"""The ``fitem`` command line: ``fitem demo | fit | annotate | distill | segment | bench | model``.

The CLI only maps flags onto library calls and configs; all work happens in the library.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from fitem._malloc import tune_malloc
from fitem.errors import FitemError

__all__ = ["main"]

log = logging.getLogger("fitem")


def _cmd_model_info(args: argparse.Namespace) -> int:
    from fitem.models import load_model
    from fitem.models.io import model_summary

    model = load_model(args.model)
    summary = model_summary(model)
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(f"model      {summary['name']}")
    print(f"vertices   {summary['vertices']}")
    print(f"triangles  {summary['triangles']}")
    for block in ("shape", "expression", "colour"):
        print(f"{block:<10} {summary['components'][block]} components")
    print(f"extent     {' x '.join(f'{x:.0f}' for x in summary['extent_mm'])} mm")
    lms = ", ".join(f"{k} ({v})" for k, v in summary["landmarks"].items()) or "none"
    print(f"landmarks  {lms}")
    print(f"checksum   {summary['checksum']}")
    return 0


def _cmd_model_convert(args: argparse.Namespace) -> int:
    from fitem.models import load_model
    from fitem.models.io import save_model

    model = load_model(args.input)
    out = save_model(model, Path(args.output))
    print(f"wrote {out} ({model.n_vertices} vertices, checksum {model.checksum})")
    return 0


def _cmd_model_build_demo(args: argparse.Namespace) -> int:
    from fitem.models.demo import demo_model

    model = demo_model(rebuild=True)
    print(f"built demo model: {model.n_vertices} vertices, shape/expression/colour = "
          f"{model.n_shape}/{model.n_expression}/{model.n_colour}, checksum {model.checksum}")
    return 0


def _config_from_args(args: argparse.Namespace):
    from fitem.config import FitConfig

    changes = {"progress": not args.quiet}
    if getattr(args, "size", None):
        changes["size"] = args.size
    if getattr(args, "backend", None):
        changes["backend"] = args.backend
    if getattr(args, "rounds", None):
        changes["rounds"] = args.rounds
    if getattr(args, "device", None):
        changes["device"] = args.device
    return FitConfig(**changes)


def _cmd_fit(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from fitem.api import fit
    from fitem.image import load_image
    from fitem.models import load_model

    config = _config_from_args(args).replace(progress=False)
    model = load_model(args.model)
    out = Path(args.out)
    failures = 0
    for path in tqdm(args.images, desc="fitting", unit="image", disable=args.quiet):
        try:
            image = load_image(path)
            result = fit(image, model=model, config=config, landmarks=args.landmarks)
            result.save(out / Path(path).stem, image=image)
            if not result.success:
                failures += 1
                log.warning("%s: %s", path, result.message)
        except FitemError as exc:
            failures += 1
            log.error("%s: %s", path, exc)
    print(f"wrote {len(args.images) - failures} result folder(s) under {out}" +
          (f"; {failures} failed (see messages above)" if failures else ""))
    return 1 if failures else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from fitem.demo import run_demo

    config = _config_from_args(args)
    out = run_demo(Path(args.out), config=config)
    print(f"wrote {out}/ (result folder) and {out / 'demo.png'} (input | render | mask overlay)")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from fitem.bench.runner import BenchConfig, run_bench
    from fitem.config import FitConfig

    base = BenchConfig.quick() if args.quick else BenchConfig()
    changes: dict = {}
    for name in ("n", "seed", "model", "landmarks", "adam_images", "adam_iterations", "segnet", "size"):
        v = getattr(args, name)
        if v is not None:
            changes[name] = v
    if args.classes:
        changes["classes"] = tuple(c.strip() for c in args.classes.split(",") if c.strip())
    fit_changes = {}
    if args.rounds:
        fit_changes["rounds"] = args.rounds
    if args.fit_size:
        fit_changes["size"] = args.fit_size
    if fit_changes:
        changes["fit"] = FitConfig(**fit_changes)
    import dataclasses

    cfg = dataclasses.replace(base, **changes)
    report = run_bench(cfg, Path(args.out), n_jobs=args.jobs, progress=not args.quiet)
    out = Path(args.out)
    em = report["segmentation"]["em"][-1]
    print(f"fitem bench: {cfg.n} images, visible-face F1 {em['f1']:.3f}, occluder F1 {em['occluder_f1']:.3f} "
          f"(all classes); wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'figure.png'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fitem", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    sub = p.add_subparsers(dest="command", required=True)
    from fitem.annotation.cli import register as register_annotate


    def fit_flags(sp):
        sp.add_argument("--size", type=int, help="working resolution in pixels (default 224)")
        sp.add_argument("--backend", choices=["auto", "torch", "nvdiffrast"], help="rasterizer backend")
        sp.add_argument("--rounds", type=int, help="EM rounds (default 3)")
        sp.add_argument("--device", help="torch device, e.g. cpu or cuda")
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    d = sub.add_parser("demo", help="fit a real photograph with a pasted occluder, write a result folder + picture")
    d.add_argument("--out", default="fitem-demo", help="output folder (default ./fitem-demo)")
    fit_flags(d)
    d.set_defaults(func=_cmd_demo)

    f = sub.add_parser("fit", help="fit images and write one result folder per image")
    f.add_argument("images", nargs="+", help="image files")
    f.add_argument("--out", required=True, help="output folder")
    f.add_argument("--model", default="demo", help="'demo' or a model file (BFM 2017 .h5, BFM 2009 .mat, fitem .npz/.h5)")
    f.add_argument("--landmarks", help="a .pts file of 68 landmarks (single image only)")
    fit_flags(f)
    f.set_defaults(func=_cmd_fit)

    b = sub.add_parser("bench", help="the synthetic occlusion benchmark with its baselines (results.json, .md, figure)")
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--quick", action="store_true", help="20 images, Adam on 5: a few minutes on 2 CPU cores")
    b.add_argument("--n", type=int, help="number of images (default 100; --quick: 20)")
    b.add_argument("--seed", type=int, help="seed of the first image (default 0)")
    b.add_argument("--model", help="'demo' (default) or a model file")
    b.add_argument("--classes", help="comma-separated occluder classes (default: none,glasses,scarf,hand,object)")
    b.add_argument("--landmarks", choices=["truth", "detect"], help="true landmarks + 1.5 px noise (default) or MediaPipe")
    b.add_argument("--size", type=int, help="synthetic image side (default 224)")
    b.add_argument("--fit-size", type=int, help="working resolution of the fits (default 224)")
    b.add_argument("--rounds", type=int, help="EM rounds of the fits (default 3)")
    b.add_argument("--adam-images", type=int, help="images with the Adam comparison (default 5)")
    b.add_argument("--adam-iterations", type=int, help="Adam's iteration budget (default 300; --quick: 200)")
    b.add_argument("--segnet", help="a distilled segmentation net (.pt): adds its rows and net-seeded fits")
    b.add_argument("-j", "--jobs", type=int, default=1, help="images in parallel (processes; default 1)")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=_cmd_bench)

    register_annotate(sub)

    m = sub.add_parser("model", help="inspect, convert or rebuild models")
    msub = m.add_subparsers(dest="model_command", required=True)
    mi = msub.add_parser("info", help="print sizes, landmarks and checksum of a model")
    mi.add_argument("model", help="'demo' or a model file")
    mi.add_argument("--json", action="store_true", help="print JSON")
    mi.set_defaults(func=_cmd_model_info)
    mc = msub.add_parser("convert", help="write any supported model in fitem's format (.npz or .h5)")
    mc.add_argument("input")
    mc.add_argument("output")
    mc.set_defaults(func=_cmd_model_convert)
    mb = msub.add_parser("build-demo", help="rebuild the built-in demo model and its cache")
    mb.set_defaults(func=_cmd_model_build_demo)

    from fitem.segnet.cli import register as register_segnet

    register_segnet(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "landmarks", None) and len(getattr(args, "images", [])) > 1:
        parser.error("--landmarks applies to a single image")
    tune_malloc()  # the CPU path allocates large temporaries every iteration (see fitem._malloc)
    try:
        return int(args.func(args) or 0)
    except FitemError as exc:
        print(f"fitem: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fitem: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
