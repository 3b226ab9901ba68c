"""``fitem annotate``: the command-line front of :func:`fitem.annotation.annotate`.

Wire it into ``fitem/cli.py`` with::

    from fitem.annotation.cli import register as register_annotate
    register_annotate(sub)          # sub = the parser's add_subparsers(...)
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys

from fitem.errors import FitemError

__all__ = ["register", "run_cli"]

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURES, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


def register(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add the ``annotate`` sub-command to a ``fitem`` parser's sub-parsers; returns its parser."""
    from fitem.annotation.runner import BACKENDS

    a = subparsers.add_parser(
        "annotate", help="fit every image of a folder or list; resumable, parallel (masks + 3D parameters)",
        description="Fit every image of a data set and write, per image, the visible-face mask and the 3D "
                    "parameters under OUT/results/<key>/, with a manifest (OUT/manifest.jsonl). Re-running the "
                    "same command resumes. A sidecar <stem>.pts next to an image supplies its 68 landmarks.")
    a.add_argument("inputs", metavar="IN_DIR_OR_LIST",
                   help="a folder of images (recursive), a text file with one image path per line, or one image")
    a.add_argument("--out", required=True, help="output folder (created; its parent must exist)")
    a.add_argument("-j", "--jobs", type=int, default=1, help="parallel workers (default 1; -1 = all cores)")
    a.add_argument("--backend", choices=list(BACKENDS), default="loky",
                   help="parallel backend (default loky; dask / ray need their extras)")
    a.add_argument("--scheduler", help="Dask scheduler address (tcp://host:8786) or Ray address; default with "
                                       "--backend dask: a local cluster of -j worker processes")
    a.add_argument("--overwrite", action="store_true", help="redo every image, also those done")
    a.add_argument("--retry-failed", action="store_true", help="redo images that failed earlier")
    a.add_argument("--overlay", action="store_true", help="also write overlay.png (input with the mask tinted)")
    a.add_argument("--mesh", action="store_true", help="also write mesh.ply (fitted mesh, camera space, mm)")
    a.add_argument("--arrays", action="store_true",
                   help="also write arrays.npz (posterior, region, vertices; FitResult.load needs it)")
    a.add_argument("--model", default="demo", help="'demo' or a model file (default demo)")
    a.add_argument("--size", type=int, help="working resolution in pixels (default 224)")
    a.add_argument("--rounds", type=int, help="EM rounds (default 3)")
    a.add_argument("--report", metavar="DIR",
                   help="afterwards write DIR/contact_sheet.png (worst-fitting images first, masks tinted), "
                        "DIR/costs.png (distribution of fit errors) and DIR/report.json")
    a.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary table")
    a.set_defaults(func=run_cli)
    return a


def _command(args: argparse.Namespace) -> str:
    parts = ["fitem", "annotate", args.inputs, "--out", args.out, "-j", str(args.jobs)]
    if args.backend != "loky":
        parts += ["--backend", args.backend]
    if args.scheduler:
        parts += ["--scheduler", args.scheduler]
    if args.model != "demo":
        parts += ["--model", args.model]
    if args.size:
        parts += ["--size", str(args.size)]
    if args.rounds:
        parts += ["--rounds", str(args.rounds)]
    if getattr(args, "report", None):
        parts += ["--report", args.report]
    for flag in ("retry_failed", "overlay", "mesh", "arrays", "quiet"):
        if getattr(args, flag):
            parts.append("--" + flag.replace("_", "-") if flag != "quiet" else "-q")
    return shlex.join(parts)


def run_cli(args: argparse.Namespace) -> int:
    """Handler of ``fitem annotate``: 0 all done, 1 some images failed (in this or an earlier run and not
    retried), 2 bad usage or a typed error (message, no traceback), 130 interrupted (Ctrl-C)."""
    from fitem.annotation.runner import AnnotateInterrupted, annotate
    from fitem.config import FitConfig

    try:
        changes = {}
        if args.size:
            changes["size"] = args.size
        if args.rounds:
            changes["rounds"] = args.rounds
        summary = annotate(args.inputs, args.out, config=FitConfig(**changes), model=args.model, n_jobs=args.jobs,
                           backend=args.backend, scheduler=args.scheduler, overwrite=args.overwrite,
                           retry_failed=args.retry_failed, save_overlay=args.overlay, save_mesh=args.mesh,
                           save_arrays=args.arrays, progress=not args.quiet)
    except AnnotateInterrupted as exc:
        print(exc.summary.table(), file=sys.stderr)
        print(f"fitem annotate: interrupted; the manifest is saved. Resume with:\n  {_command(args)}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except FitemError as exc:
        print(f"fitem: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if not args.quiet:
        print(summary.table())
    if args.report:
        from fitem.annotation.report import write_report

        try:
            write_report(args.out, args.report)
        except FitemError as exc:
            print(f"fitem: error: report: {exc}", file=sys.stderr)
            return EXIT_ERROR
        if not args.quiet:
            print(f"report: {args.report}/contact_sheet.png, costs.png, report.json")
    return EXIT_FAILURES if summary.failed or summary.not_retried else EXIT_OK
