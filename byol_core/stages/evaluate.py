"""evaluate: frozen features -> linear probe and kNN, against random-init and pixel baselines."""

from __future__ import annotations

import io
import time

import torch

from byol_core import csvfile, metrics, progress

from byol_core.data.prepared import load_prepared, spread as spread_rows
from byol_core.train.checkpoint import input_normalisation, load_encoder
from byol_core.device import resolve_device
from byol_core.errors import ByolError
from byol_core.evaluate import linear_probe, pixel_dim, pixel_features
from byol_core.train.features import extract_features, knn_top1
from byol_core.train.nets import build_encoder
from byol_core.pictures import label_efficiency
from byol_core.retrieval import balanced_subset, retrieval_metrics, spread_metrics
from byol_core.schema.probe import EvaluateParams
from byol_core.io.storage import StageCommit, text_writer

LABELS = {"byol": "BYOL encoder", "random_init": "random-init encoder", "pixels": "raw pixels"}
VIEW = EvaluateParams  # the params keys this stage reads (dvc.yaml's params: list)
REPORT_EVERY = 10.0  # seconds: within a long step (a split's features), at most one line this often


class _Lines:
    """evaluate's progress lines. Every line, the summary too, ends with the seconds since
    the stage began: one unit and one convention, so lines compare at a glance."""

    def __init__(self) -> None:
        self.started = self.last = time.perf_counter()

    def elapsed(self) -> str:
        return f"{time.perf_counter() - self.started:.1f}s elapsed"

    def say(self, text: str) -> None:
        self.last = time.perf_counter()
        progress.report(f"evaluate: {text} ({self.elapsed()})")

    def now_and_then(self, text: str) -> None:
        """``say`` it, unless a line went out less than REPORT_EVERY seconds ago."""
        if time.perf_counter() - self.last >= REPORT_EVERY:
            self.say(text)


def _predictions_csv(classes: list[str], actual, predicted) -> str:
    """The confusion-matrix rows; the csv module quotes class names with commas or quotes, and
    :mod:`byol_core.csvfile` keeps one that begins like a formula from running as one."""
    out = io.StringIO()
    writer = csvfile.writer(out, lineterminator="\n")
    writer.writerow(["actual", "predicted"])
    writer.writerows((classes[a], classes[p]) for a, p in zip(actual, predicted))
    return out.getvalue()


def run(params: EvaluateParams) -> tuple[str, dict]:
    lines = _Lines()
    outputs = StageCommit("evaluate", params.paths.metrics)
    outputs.recover()
    prepared = load_prepared(params.paths.prepared, ("train", "test"))
    encoder, spec, info = load_encoder(params.paths.encoder)
    if spec.in_channels != prepared.card.channels:
        raise ByolError(f"{params.paths.encoder} expects {spec.in_channels}-channel images but the prepared "
                        f"data has {prepared.card.channels}. Run `byol pretrain` on this data again.")
    device = resolve_device(params.device)
    mean, std = input_normalisation(info)
    cfg = params.evaluate
    classes = prepared.card.classes
    # Each probe holds at most evaluate.probe_max_mb of features: a larger split is probed on
    # an evenly spaced subset (every class keeps its share), read from the shards in batches.
    widest = max(spec.feature_dim, pixel_dim(spec.in_channels, prepared.card.height))
    rows = max(1, int(cfg.probe_max_mb * 2**20) // (4 * widest))
    picked = {split: spread_rows(len(prepared.labels[split]), rows) for split in ("train", "test")}
    x_train, y_train = prepared.images["train"].subset(picked["train"]), prepared.labels["train"][picked["train"]]
    x_test, y_test = prepared.images["test"].subset(picked["test"]), prepared.labels["test"][picked["test"]]

    torch.manual_seed(params.seed)
    random_encoder = build_encoder(spec)
    features = {}
    images = len(y_train) + len(y_test)
    for name, net in (("byol", encoder), ("random_init", random_encoder)):
        net = net.to(device)

        def extracted(done: int, name=name) -> None:  # ``done`` counts the train images, then the test ones
            lines.now_and_then(f"features, {LABELS[name]}: {done}/{images} images")

        features[name] = (extract_features(net, x_train, mean, std, cfg.batch_size, device, extracted),
                          extract_features(net, x_test, mean, std, cfg.batch_size, device,
                                           lambda done: extracted(len(y_train) + done)))
        lines.say(f"features of {len(y_train)} train and {len(y_test)} test images, {LABELS[name]}")
    features["pixels"] = (pixel_features(x_train, mean, std), pixel_features(x_test, mean, std))
    lines.say(f"features of {len(y_train)} train and {len(y_test)} test images, {LABELS['pixels']}")
    total, done = len(features) * (1 + len(cfg.label_fractions)), []

    # The probes run on the device (seconds on a GPU); each feature set is copied there once.
    on_device = {name: (f_train.to(device), f_test.to(device)) for name, (f_train, f_test) in features.items()}

    def fit(name: str, rows, share: float):
        f_train, f_test = on_device[name]
        probe = linear_probe(f_train[rows], y_train[rows], f_test, y_test, len(classes), cfg, params.seed)
        done.append(name)
        lines.say(f"probe {len(done)}/{total}, {LABELS[name]} on {share:.0%} of the train labels: top-1 {probe.top1:.4f}")
        return probe

    probes = {name: fit(name, slice(None), 1.0) for name in features}
    # The same weighted kNN on every feature set, so the encoder's kNN has its baselines too.
    knns = {}
    for name, (f_train, f_test) in features.items():
        knns[name] = knn_top1(f_train, y_train, f_test, y_test, len(classes), params.knn)
        lines.say(f"kNN top-1 {knns[name]:.4f}, {LABELS[name]}")
    knn = knns["byol"]
    # The same probes on small class-balanced shares of the train labels (seeded), and the
    # test images as retrieval queries against the train gallery.
    efficiency = {name: {"1.0": probe.top1} for name, probe in probes.items()}
    for fraction in cfg.label_fractions:
        few = balanced_subset(y_train, fraction, params.seed)
        for name in features:
            efficiency[name][str(fraction)] = fit(name, few, fraction).top1
    retrieval = {}
    for name, (f_train, f_test) in features.items():
        retrieval[name] = retrieval_metrics(f_train, y_train, f_test, y_test)
        lines.say(f"retrieval, {LABELS[name]}: recall@1 {retrieval[name]['recall_at_1']:.4f}, "
                  f"mAP@R {retrieval[name]['map_at_r']:.4f}")
    # How much room the test features use: effective rank near 1 or mean cosine near 1 is collapse.
    spread = {name: spread_metrics(f_test) for name, (_, f_test) in features.items()}

    figures = metrics.EvalMetrics(
        linear_top1=probes["byol"].top1,
        linear_top5=probes["byol"].top5,
        knn_top1=knn,
        random_init_linear_top1=probes["random_init"].top1,
        pixels_linear_top1=probes["pixels"].top1,
        random_init_knn_top1=knns["random_init"],
        pixels_knn_top1=knns["pixels"],
        effective_rank=spread["byol"]["effective_rank"],
        mean_cosine=spread["byol"]["mean_cosine"],
        n_train=int(len(y_train)),
        n_test=int(len(y_test)),
        subset=bool(len(y_train) < len(prepared.labels["train"]) or len(y_test) < len(prepared.labels["test"])),
        probe={name: metrics.ProbeSummary(**result.summary()) for name, result in probes.items()},
        retrieval={name: metrics.Retrieval(**found) for name, found in retrieval.items()},
        label_efficiency=efficiency,
        spread={name: metrics.Spread(**found) for name, found in spread.items()},
    )
    curves = {LABELS[name]: points for name, points in efficiency.items()}
    outputs.write([(params.paths.eval_metrics, metrics.writer(figures)),
                   (params.paths.eval_predictions, text_writer(_predictions_csv(classes, y_test, probes["byol"].predictions))),
                   (params.paths.eval_label_efficiency, lambda tmp: tmp.write_bytes(label_efficiency(curves)))])
    line = (f"evaluate: linear {figures.linear_top1:.4f} (top5 {figures.linear_top5:.4f}), "
            f"knn {knn:.4f}; baselines: random-init {figures.random_init_linear_top1:.4f}, "
            f"pixels {figures.pixels_linear_top1:.4f} (knn {knns['pixels']:.4f}) on {figures.n_test} test images; "
            f"retrieval recall@1 {retrieval['byol']['recall_at_1']:.4f}, mAP@R {retrieval['byol']['map_at_r']:.4f}; "
            f"effective rank {spread['byol']['effective_rank']:.1f} of {spec.feature_dim}, "
            f"mean cosine {spread['byol']['mean_cosine']:.3f}; "
            f"{', '.join(f'{float(f):.0%} labels {v:.4f}' for f, v in efficiency['byol'].items() if f != '1.0')} "
            f"({lines.elapsed()})")
    return line, metrics.to_json(figures)
