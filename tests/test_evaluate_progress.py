"""evaluate's progress lines: feature extraction reports as it goes, and every line gives
its time the same way (seconds since the stage began)."""

import re

import torch

import byol_core.stages.evaluate as evaluate_stage
from byol_core import progress, stages
from byol_core.train.checkpoint import save_encoder
from byol_core.config import load_params
from byol_core.data.ingest import ingest
from byol_core.train.nets import build_encoder
from byol_core.train.step import encoder_spec
from conftest import TINY, make_fashion_files, write_params

ELAPSED = re.compile(r"^evaluate: .* \((\d+\.\d)s elapsed\)$")


def test_every_evaluate_line_gives_the_seconds_since_it_began_and_extraction_reports_as_it_goes(tmp_path, monkeypatch):
    make_fashion_files(tmp_path / "src", n_train=96, n_test=32)
    params = load_params(write_params(tmp_path, {**TINY, "data.source_dir": str(tmp_path / "src"),
                                                 "evaluate.batch_size": 16, "evaluate.max_iter": 5,
                                                 "evaluate.label_fractions": [0.5]}))
    ingest(params.data, params.paths.prepared, params.paths.cache)
    torch.manual_seed(0)  # an untrained encoder will do: this is about the lines, not the figures
    spec = encoder_spec(params, 1)
    save_encoder(params.paths.encoder, build_encoder(spec), spec, {"size": 28, "mean": [0.5], "std": [0.25]})
    monkeypatch.setattr(evaluate_stage, "REPORT_EVERY", 0.0)  # every batch may speak
    lines = []
    with progress.listening(lines.append):
        summary, _ = stages.run("evaluate", params)

    assert all(ELAPSED.match(line) for line in lines + [summary]), [l for l in lines + [summary] if not ELAPSED.match(l)]
    seconds = [float(ELAPSED.match(line).group(1)) for line in lines + [summary]]
    assert seconds == sorted(seconds)  # cumulative, never per step
    # Within each encoder's extraction: the images done so far, batch by batch (96 + 32 in
    # batches of 16), before the line that says that feature set is done.
    for label in ("BYOL encoder", "random-init encoder"):
        counts = [int(re.search(rf"features, {label}: (\d+)/128 images", line).group(1))
                  for line in lines if f"features, {label}:" in line]
        assert counts == list(range(16, 97, 16)) + list(range(112, 129, 16))
    done = [line for line in lines if line.startswith("evaluate: features of 96 train and 32 test images")]
    assert [line.split(", ")[1].split(" (")[0] for line in done] == ["BYOL encoder", "random-init encoder", "raw pixels"]
    assert len([line for line in lines if line.startswith("evaluate: probe ")]) == 3 * 2
    assert len([line for line in lines if line.startswith("evaluate: retrieval, ")]) == 3
    assert any(line.startswith("evaluate: kNN top-1 ") for line in lines)
