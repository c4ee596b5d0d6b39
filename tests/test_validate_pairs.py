"""align/validate.py: bad pairs are skipped with a reason (or fail fast in strict mode), good ones kept."""

from __future__ import annotations

import json

import datasets
import pytest
from PIL import Image

import tiny_models  # tests/ is on sys.path (pytest's default "prepend" import mode)
from halign.align.validate import SKIPPED_FILE, BadPairError, prompt_length, validate_pairs
from halign.data_gen.pairs import to_dataset


def row(pid, image, chosen="a red circle .", rejected="a blue square .", question="describe the image ."):
    return {"prompt_id": pid, "image_paths": [str(image)], "prompt": [{"role": "user", "content": question}],
            "chosen": [{"role": "assistant", "content": chosen}], "rejected": [{"role": "assistant", "content": rejected}],
            "chosen_score": 1.0, "rejected_score": 0.0, "judge": "test"}


@pytest.fixture()
def images(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (32, 32), (200, 20, 20)).save(good)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    return {"good": good, "broken": broken, "missing": tmp_path / "missing.png"}


@pytest.fixture(scope="module")
def llava_processor():
    return tiny_models.build_family("llava")[1]


def test_bad_pairs_are_skipped_with_reasons(images, tmp_path):
    rows = [row("ok", images["good"]), row("gone", images["missing"]), row("broken", images["broken"]),
            row("empty", images["good"], chosen="  "), row("norej", images["good"], rejected=""),
            row("same", images["good"], chosen="a red  circle .", rejected="a red circle ."), row("ok2", images["good"])]
    kept, summary = validate_pairs(to_dataset(rows), out_dir=tmp_path)
    assert kept["prompt_id"] == ["ok", "ok2"]
    assert summary == {"checked": 7, "kept": 2, "skipped": 5, "skipped_reasons": {
        "missing_image": 1, "unreadable_image": 1, "empty_chosen": 1, "empty_rejected": 1, "identical": 1}}
    records = [json.loads(line) for line in (tmp_path / SKIPPED_FILE).read_text().splitlines()]
    assert [(r["index"], r["prompt_id"], r["reason"]) for r in records] == [
        (1, "gone", "missing_image"), (2, "broken", "unreadable_image"), (3, "empty", "empty_chosen"),
        (4, "norej", "empty_rejected"), (5, "same", "identical")]
    assert str(images["missing"]) in records[0]["detail"]
    # The kept rows still decode their images for training.
    assert kept[0]["images"][0].size == (32, 32)


def test_saved_dataset_with_corrupt_embedded_image(images, tmp_path):
    # datasets embeds image bytes on save_to_disk: the check must decode the bytes, not look for the file.
    to_dataset([row("ok", images["good"]), row("broken", images["broken"])]).save_to_disk(str(tmp_path / "ds"))
    images["good"].unlink()
    kept, summary = validate_pairs(datasets.load_from_disk(str(tmp_path / "ds")))
    assert kept["prompt_id"] == ["ok"] and summary["skipped_reasons"] == {"unreadable_image": 1}


def test_prompt_length_counts_image_tokens(images, llava_processor):
    # "USER: <image> describe the image . ASSISTANT:" = USER: + 16 image tokens (32 px / 8 px patches,
    # CLS dropped) + describe the image . + ASSISTANT: = 1 + 16 + 4 + 1 = 22 tokens.
    image = Image.open(images["good"]).convert("RGB")
    r = row("x", images["good"])
    assert prompt_length(llava_processor, r, [image]) == 22
    ds = to_dataset([r, row("short", images["good"], question="yes ?")])  # "yes ?": 1 + 16 + 2 + 1 = 20
    kept, summary = validate_pairs(ds, llava_processor, max_length=22)
    assert kept["prompt_id"] == ["short"] and summary["skipped_reasons"] == {"prompt_too_long": 1}
    kept, summary = validate_pairs(ds, llava_processor, max_length=23)
    assert summary["skipped"] == 0 and len(kept) == 2
    kept, summary = validate_pairs(ds, llava_processor, max_length=None)  # no limit, no length check
    assert summary["skipped"] == 0


def test_strict_mode_names_the_record(images):
    ds = to_dataset([row("ok", images["good"]), row("p-broken", images["broken"]), row("gone", images["missing"])])
    with pytest.raises(BadPairError, match=r"pair 1 \(prompt_id p-broken\): unreadable_image"):
        validate_pairs(ds, strict=True)


def test_nothing_left_is_an_error(images, tmp_path):
    with pytest.raises(ValueError, match="no usable preference pairs"):
        validate_pairs(to_dataset([row("gone", images["missing"])]), out_dir=tmp_path)
    assert (tmp_path / SKIPPED_FILE).exists()  # the reasons are on disk even when training cannot start
