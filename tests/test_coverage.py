"""What the detector covers, said from measured numbers: per-generator sets, the protocol block, the page."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient
from PIL import Image

from diffsleuth.detectors.registry import load_detector, resolve_detector_path
from diffsleuth.evaluation.card_protocol import protocol_block
from diffsleuth.evaluation.verdict_rates import beyond_sets
from diffsleuth.server.app import create_app
from diffsleuth.server.pages import coverage_html
from toy_detector import saved_toy


def rate(k: int, n: int) -> dict:
    return {"k": k, "n": n, "rate": k / n, "ci95": [0.0, 1.0]}


def verdicts(generated: int, n: int) -> dict:
    return {"generated": rate(generated, n), "uncertain": rate(0, n), "outside the detector's domain": rate(0, n),
            "no trace found": rate(n - generated, n)}


def test_beyond_sets_split_by_generator_and_real_source(tmp_path):
    rows = [("fake/a.png", "fake", "cyclegan", "gan"), ("fake/b.png", "fake", "stargan", "gan"),
            ("fake/c.png", "fake", "dalle-mini", "2022-era"), ("fake/d.png", "fake", "stylegan2-tpdne", "gan-faces"),
            ("real/e.png", "real", "real", "faces"), ("real/f.png", "real", "real", "gan-matched-real")]
    lines = ["file,label,generator,family"]
    for path, label, generator, family in rows:
        (tmp_path / path).parent.mkdir(exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / path)
        lines.append(f"{path},{label},{generator},{family}")
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    sets = beyond_sets(str(tmp_path))
    assert sorted(sets) == ["2022-era generator (dalle-mini)", "GAN (cyclegan)", "GAN (stargan)", "StyleGAN2 faces",
                            "real FFHQ faces", "real photos matched to the GANs"]
    assert [s.record.path.name for s in sets["real FFHQ faces"]] == ["e.png"]
    assert all(s.record.label == 1 for s in sets["GAN (cyclegan)"])


def metrics(tmp_path, sets: dict, classes: dict) -> object:
    path = tmp_path / "card_metrics.json"
    path.write_text(json.dumps({"verdict_rates": {"degradations": ["jpeg:90", "jpeg:75"], "sets": sets,
                                                  "classes": classes, "synthetic": {}}}), encoding="utf-8")
    return path


def test_page_coverage_shows_each_set_once_escaped_and_nothing_without_metrics(tmp_path):
    path = metrics(tmp_path, {"GAN (<b>x</b>)/jpeg:90": verdicts(3, 20), "GAN (<b>x</b>)/jpeg:75": verdicts(9, 20),
                              "real FFHQ faces/jpeg:90": verdicts(24, 150)},
                   {"GAN (<b>x</b>)/jpeg:90": "generated", "real FFHQ faces/jpeg:90": "real"})
    shown = coverage_html(path)
    assert "GAN (&lt;b&gt;x&lt;/b&gt;)" in shown and "<b>x</b>" not in shown
    assert "3 of 20 (15%)" in shown and "9 of 20" not in shown  # the first degradation only
    assert "<td>real FFHQ faces</td><td>real</td><td>24 of 150 (16%)</td><td>0</td>" in shown
    assert "JPEG quality 90" in shown
    assert coverage_html(tmp_path / "missing.json") == ""
    (tmp_path / "bad.json").write_text('{"verdict_rates": {"sets": 3}}', encoding="utf-8")
    assert coverage_html(tmp_path / "bad.json") == ""


def test_page_shows_the_cards_coverage_beside_the_model_card(tmp_path):
    card = tmp_path / "card" / "MODEL_CARD.md"
    card.parent.mkdir()
    card.write_text("# Toy card\n", encoding="utf-8")
    metrics(card.parent, {"StyleGAN2 faces/jpeg:90": verdicts(4, 80)}, {"StyleGAN2 faces/jpeg:90": "generated"})
    page = TestClient(create_app(load_detector(saved_toy(tmp_path / "toy")), model_card=card)).get("/").text
    assert "Measured on images it never trained on" in page and "4 of 80 (5%)" in page and "{{coverage}}" not in page
    bare = TestClient(create_app(load_detector(saved_toy(tmp_path / "toy2")))).get("/").text
    assert "Measured on images it never trained on" not in bare and "{{coverage}}" not in bare


def test_protocol_block_says_mean_worst_fold_and_each_target():
    grid = {"folds": 2, **{key: {"mean": 0.5, "worst": 0.0, "worst_fold": "gan | ffhq", "folds_ge_90": 0,
                                 "by_fake": {"gan": 0.25, "sd14": 0.75}, "by_real": {"ffhq": 0.5},
                                 "by_generator": {}} for key in ("5%", "1%")}}
    protocol = {"variant": "v2-judge", "command": "python benchmarks/protocol_v3.py", "train_sources": ["sd14"],
                "grid": grid, "checks": {"ffhq": {"5%": 0.16, "1%": 0.03, "n": 150}},
                "targets": [{"what": "worst grid fold, 5% FPR", "target": ">= 0.60", "measured": 0.0, "met": False},
                            {"what": "x", "target": "<= 0.03", "measured": 0.01, "met": True}]}
    block = protocol_block(protocol)
    assert "| worst fold | 0.0% (GANs (5) with FFHQ faces left out) |" in block
    assert "| GANs (5) | 25.0% | 25.0% |" in block
    assert "| FFHQ faces | 16.0% | 150 |" in block
    assert "| worst grid fold, 5% FPR | >= 0.60 | 0.0% | **missed** |" in block and "| x | <= 0.03 | 1.0% | met |" in block


def test_shipped_card_and_page_say_what_the_default_does_not_cover():
    folder = resolve_detector_path("default")
    report = json.loads((folder / "card_metrics.json").read_text())
    names = {name.rsplit("/", 1)[0] for name in report["verdict_rates"]["sets"]}
    assert {"StyleGAN2 faces (not in the face reference)", "real FFHQ faces (not in the face reference)",
            "GAN (cyclegan)", "2022-era generator (dalle-mini)"} <= names
    card = (folder / "MODEL_CARD.md").read_text()
    assert protocol_block(report["protocol"]) in card and "**missed**" in card
    assert "StyleGAN2 faces" in coverage_html(folder / "card_metrics.json")
