"""The ``byol`` command: ``byol scan|ingest|pretrain|evaluate|export|embed [--params PATH]``
(``byol --help`` lists what each reads and writes, ``byol --version`` the installed version)
(``byol scan --force`` reads every source file again, not only new or changed ones),
``byol neighbours QUERY... [--index N] [--k K] [--json]``, ``byol promote [--params PATH]``
(the last pretrain's state becomes the start of a warm-started one: byol_core.promote), and
``byol check collapse|parity [--params PATH]`` (one JSON line of the figures an asset check
judges: byol_core.checks), ``byol verify [--params PATH]`` (the prepared data, the cache and the embeddings against their
recorded digests: byol_core.verify; each damaged file is one error line, and the exit code is 1).

Each stage prints one summary line on stdout (progress goes to stderr). Every failure
prints ``byol <stage>: error: <what, where, what to do>`` and exits 1, without a traceback:
a user mistake (ByolError), a system error (disk full, permission denied, read-only file
system), running out of memory, and even a bug, whose traceback goes to a log file under
``.byol/logs/`` instead. Ctrl-C exits 130 and SIGTERM 143, after every stage removed what
it had half written, even where the signal lands in an import that turns it into another error.
When an orchestrator launched the stage through Dagster Pipes (``DAGSTER_PIPES_CONTEXT``
is set, and passes through ``dvc repro``), the stage's progress lines (byol_core.progress)
go to the run's log as they happen, and the summary and metrics are sent back at the end;
otherwise nothing is, and ``dagster_pipes`` is never imported.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from contextlib import contextmanager

from byol_core import progress, stages

from byol_core.io import locks
from byol_core.errors import ByolError, brief

# What each command reads and writes, at the default paths (params.yaml's `paths` moves them),
# and the page of docs/ that tells more. tests/test_docs.py holds the files against dvc.yaml.
FILES = {
    "scan": ("data.source_dir (data/raw/fashion-mnist/): only files new or changed since the last scan",
             "data/source.parquet (path, size and digest of every file) and its side cache in .byol/cache/",
             "data.md#the-source-listing"),
    "ingest": ("the source in data.source_dir, held to data/source.parquet",
               "data/prepared/: image shards, labels, manifest.parquet, card.json", "data.md"),
    "pretrain": ("data/prepared/; models/start/checkpoint.pt with pretrain.init: previous",
                 "models/encoder.pt, models/checkpoint.pt, metrics/pretrain.json, metrics/pretrain_curve.csv, "
                 "metrics/pretrain_steps.csv", "pipeline.md#the-stages"),
    "evaluate": ("data/prepared/, models/encoder.pt",
                 "metrics/eval.json, metrics/eval_predictions.csv, metrics/label_efficiency.png",
                 "encoder.md#what-evaluate-measures"),
    "export": ("models/encoder.pt, test images from data/prepared/",
               "models/encoder.onnx, models/encoder.onnx.json, metrics/export.json", "encoder.md#the-onnx-file-alone"),
    "embed": ("data/prepared/, models/encoder.onnx",
              "data/embeddings/ (embeddings.parquet, vectors.npy, near_duplicates.csv, card.json), "
              "metrics/embed.json, metrics/neighbours.png, metrics/embedding_map.png", "encoder.md"),
    "neighbours": ("the query files or prepared images, models/encoder.onnx, data/embeddings/",
                   "nothing: prints each query's nearest images", "encoder.md#nearest-neighbours"),
    "promote": ("models/checkpoint.pt, params.yaml",
                "models/start/checkpoint.pt and params.yaml's pretrain.init_sha256 line", "pipeline.md#warm-start"),
    "check": ("models/encoder.pt, models/encoder.onnx (parity), test images from data/prepared/",
              "nothing: one JSON line of figures (what Dagster's asset checks judge)", "dagster.md#asset-checks"),
    "verify": ("data/prepared/, the cache in .byol/cache/, data/embeddings/",
               "nothing: a summary line, or one error line per damaged file (exit 1)", "reliability.md#byol-verify"),
}
DOCS = "docs/"  # the documentation's Markdown, in the repository; `make docs` builds it into site/


def _about(name: str, summary: str) -> dict:
    """The help of command ``name``: what it does, reads and writes, and where to read more."""
    reads, writes, page = FILES[name]
    epilog = f"reads:  {reads}\nwrites: {writes}\ndocs:   {DOCS}{page}"
    return {"help": summary, "description": summary, "epilog": epilog,
            "formatter_class": argparse.RawDescriptionHelpFormatter}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"byol {version('byol-pipeline')}"
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "byol (byol-pipeline, not installed)"


def build_parser() -> argparse.ArgumentParser:
    flow = "\n".join(f"  {name:<11}{FILES[name][0]}\n  {'':<11}-> {FILES[name][1]}" for name in stages.STAGES)
    parser = argparse.ArgumentParser(
        prog="byol", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="BYOL pipeline stages: scan -> ingest -> pretrain -> evaluate -> export -> embed; "
                    "neighbours; promote; and verify. `dvc repro` runs the stages in order.",
        epilog=f"what each stage reads -> writes (default paths):\n{flow}\n\n"
               f"`byol STAGE --help` says more. Documentation: {DOCS}index.md (`make docs` builds the site).")
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, help_text in stages.STAGES.items():
        sub = commands.add_parser(name, **_about(name, help_text))
        sub.add_argument("--params", default="params.yaml", help="params file (default: ./params.yaml)")
        if name == "scan":
            sub.add_argument("--force", action="store_true", help="read every file again, also those whose size "
                             "and mtime did not change (after a file was rewritten with the same size and mtime)")
    about = ("the prepared images most like each query, by cosine similarity of the shipped ONNX encoder's "
             "embeddings (run after `byol embed`)")
    sub = commands.add_parser("neighbours", **_about("neighbours", about))
    sub.add_argument("queries", nargs="*", metavar="QUERY", help="image files (any format PIL reads) or .npy "
                     "uint8 arrays (C, H, W)")
    sub.add_argument("--index", action="append", default=[], metavar="[SPLIT:]N",
                     help="a prepared image as the query (train unless SPLIT is given; its own row is left out)")
    sub.add_argument("--k", type=int, default=10, help="neighbours per query (default: 10)")
    sub.add_argument("--json", action="store_true", help="print a JSON list, one entry per query")
    sub.add_argument("--exact", action="store_true", help="search every embedding even where the embed stage "
                     "built an approximate index (galleries of embed.approximate_from images and more)")
    sub.add_argument("--params", default="params.yaml", help="params file (default: ./params.yaml)")
    about = ("copy the last pretrain's full training state to paths.start and write its sha256 into the params "
             "file's pretrain.init_sha256, for a warm start (pretrain.init: previous)")
    sub = commands.add_parser("promote", **_about("promote", about))
    sub.add_argument("--params", default="params.yaml", help="params file, rewritten in place (default: ./params.yaml)")
    about = ("measure a published artefact for a check: collapse (the spread of the encoder's features on test "
             "images) or parity (the ONNX file against the PyTorch encoder); prints the figures as JSON")
    sub = commands.add_parser("check", **_about("check", about))
    sub.add_argument("what", choices=("collapse", "parity"), help="which measurement")
    sub.add_argument("--params", default="params.yaml", help="params file (default: ./params.yaml)")
    about = ("check the prepared data, the conversion cache and the embeddings against the digests recorded when "
             "they were written; name each damaged file and how to repair it (exit 1), or print a summary")
    sub = commands.add_parser("verify", **_about("verify", about))
    sub.add_argument("--params", default="params.yaml", help="params file (default: ./params.yaml)")
    return parser


@contextmanager
def orchestrator(stage: str):
    """Dagster Pipes while the stage runs, if Dagster launched us (rank 0 alone speaks):
    progress lines go to the run's log, and the result is sent with ``send(line, metrics)``."""
    if "DAGSTER_PIPES_CONTEXT" not in os.environ or os.environ.get("RANK", "0") != "0":
        yield lambda line, metrics: None
        return
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes, progress.listening(pipes.log.info):
        yield lambda line, metrics: pipes.report_custom_message({"stage": stage, "summary": line, "metrics": metrics})


def _stage(stage: str, params, **options) -> tuple[str, dict]:
    with orchestrator(stage) as send:
        line, metrics = stages.run(stage, params, **options)
        send(line, metrics)
    return line, metrics


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so every stage's cleanup runs as for Ctrl-C."""


# The stop signals that arrived during this run. The exception a handler raises can come out
# as another one: raised during an import, a C extension's init may print it and raise its
# own (numpy's import_array gives ImportError("import numpy failed")). So the run ends as
# stopped, not as a bug, whatever exception comes out after one arrived.
_received: set[int] = set()


def _terminate(signum, frame):
    _received.add(signal.SIGTERM)
    raise Terminated()


def _interrupt(signum, frame):
    _received.add(signal.SIGINT)
    raise KeyboardInterrupt()


def _quiet_stops(previous):
    """sys.excepthook that prints nothing for a stop signal's exception: a C extension that
    catches one prints it through the hook, and the CLI reports the stop itself."""
    def hook(kind, value, tb):
        if not issubclass(kind, (Terminated, KeyboardInterrupt)):
            previous(kind, value, tb)
    return hook


_ADVICE = {
    errno.ENOSPC: "The disk is full: free space there, or point params.yaml's paths elsewhere.",
    errno.EDQUOT: "The disk quota is used up: free space, or point params.yaml's paths elsewhere.",
    errno.EACCES: "Permission denied: make it readable/writable, or point params.yaml's paths elsewhere.",
    errno.EPERM: "Permission denied: make it readable/writable, or point params.yaml's paths elsewhere.",
    errno.EROFS: "The file system is read-only: point params.yaml's paths at a writable folder.",
    errno.EMFILE: "Too many open files: raise the limit (ulimit -n) and run again.",
}


def _os_error(exc: OSError) -> str:
    where = f" ({exc.filename})" if exc.filename else ""
    advice = _ADVICE.get(exc.errno, "Check the file and its folder, then run again.")
    return f"{exc.strerror or type(exc).__name__}{where}. {advice}"


def _out_of_memory() -> str:
    return ("ran out of memory. Lower model.width, the heads (model.projector_hidden, predictor_hidden), "
            "pretrain.batch_size or evaluate.batch_size, or set pretrain.resident_max_mb lower.")


def _log_internal(stage: str, exc: BaseException) -> Path | None:
    """The full traceback of an unexpected error, in .byol/logs/ under the current folder."""
    folder = Path(".byol") / "logs"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{stage}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"
        path.write_text("".join(traceback.format_exception(exc)))
        return path.resolve()
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if threading.current_thread() is not threading.main_thread():  # only the main thread handles signals
        return _run(args.stage, args.params, args)
    _received.clear()
    term, hook = signal.signal(signal.SIGTERM, _terminate), sys.excepthook
    interrupt = signal.getsignal(signal.SIGINT) is signal.default_int_handler  # an ignored one (a background job) stays so
    if interrupt:
        signal.signal(signal.SIGINT, _interrupt)
    sys.excepthook = _quiet_stops(hook)
    try:
        return _run(args.stage, args.params, args)
    finally:
        signal.signal(signal.SIGTERM, term)
        if interrupt:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.excepthook = hook


def _neighbours(params, args: argparse.Namespace) -> tuple[str, dict]:
    from byol_core.data.card import read_card
    from byol_core.search.neighbours import neighbours, render

    try:  # class names are a nicety here: without a readable card, hits show no class
        classes = list(read_card(params.paths.prepared).classes)
    except ByolError:
        classes = []
    results = neighbours(params.paths.onnx, params.paths.embeddings_file, classes, args.queries, args.index, args.k,
                         args.exact)
    return render(results, args.json), {}


def _run(stage: str, params_path: str, args: argparse.Namespace | None = None) -> int:
    try:
        if stage == "promote":  # it validates the params as it will leave them (byol_core.promote)
            from byol_core.promote import promote

            print(promote(Path(params_path))[0])
            return 0
        from byol_core.config import load_params  # here: Ctrl-C while it loads is handled below

        params = load_params(params_path)
        if stage == "neighbours":
            line, _ = _neighbours(params, args)
            print(line)
            return 0
        if stage == "check":  # torch and onnxruntime run here, not in the orchestrator that asks
            import json

            from byol_core.checks import measure

            print(json.dumps(measure(args.what, params)))
            return 0
        if stage == "verify":
            from byol_core.verify import verify

            line, damaged = verify(params.paths)
            for finding in damaged:
                _fail(stage, finding)
            if damaged:
                return 1
            print(line)
            return 0
        if stage == "pretrain" and "LOCAL_RANK" not in os.environ:
            lock = locks.held(params.paths.resume, "byol pretrain")  # one run per project at a time
            if params.pretrain.processes > 1:
                from byol_core.train import distributed  # only the pretrain stage imports torch.distributed

                return distributed.launch(params.pretrain.devices, params.pretrain.nodes,
                                          [stage, "--params", params_path], lock)
            with lock:
                line, metrics = _stage(stage, params)
        else:
            options = {"force": getattr(args, "force", False)} if stage == "scan" else {}
            line, metrics = _stage(stage, params, **options)
    except BaseException as exc:
        return _failure(stage, exc)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
        print(line)
    return 0


def _failure(stage: str, exc: BaseException) -> int:
    """The exit code for what ended the run, after its one line on stderr."""
    if isinstance(exc, Terminated) or signal.SIGTERM in _received:  # even where it came out as another error
        print(f"byol {stage}: terminated; nothing was changed", file=sys.stderr)
        return 143
    if isinstance(exc, KeyboardInterrupt) or signal.SIGINT in _received:
        print(f"byol {stage}: interrupted; nothing was changed", file=sys.stderr)
        return 130
    if isinstance(exc, ByolError):
        return _fail(stage, str(exc))
    if isinstance(exc, MemoryError):
        return _fail(stage, _out_of_memory())
    if isinstance(exc, OSError):
        return _fail(stage, _os_error(exc))
    if not isinstance(exc, Exception):  # SystemExit and the like
        raise exc
    # a bug: a short message here, the traceback in a log file
    if "out of memory" in str(exc).lower() or "can't allocate memory" in str(exc).lower():
        return _fail(stage, _out_of_memory())
    log = _log_internal(stage, exc)
    where = f"The full traceback is in {log}." if log else "No log could be written."
    return _fail(stage, f"internal error ({type(exc).__name__}: {brief(exc, 200)}). This is a bug, not "
                        f"something in your data: please report it with params.yaml. {where}")


def _fail(stage: str, message: str) -> int:
    print(f"byol {stage}: error: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
