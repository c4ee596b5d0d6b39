"""Prompt sources: toy world, JSONL / JSON / HF dataset with key aliases, COCO captions, video frames;
bad images are skipped per record with a reason, never a crash."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from halign.data_gen.sources import load_source


def png(path, color=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path)
    return path


@pytest.fixture
def files(tmp_path):
    png(tmp_path / "img" / "a.png")
    png(tmp_path / "img" / "b.png", (0, 0, 255))
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    for i in range(5):
        png(tmp_path / "clip" / f"{i:03d}.png", (i * 40, 0, 0))
    return tmp_path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_aliases_and_skips(files):
    rows = [
        {"id": "plain", "images": ["img/a.png"], "question": "What is it?", "caption": "A red square."},
        # ShareGPT4V shape: `image` + conversations; the gpt turn is the detailed caption.
        {"id": "sharegpt", "image": "img/b.png", "conversations": [
            {"from": "human", "value": "<image>\nDescribe this image in detail."},
            {"from": "gpt", "value": "A blue square fills the frame."}]},
        {"image_id": 7, "image": str(files / "img" / "a.png"), "detailed_caption": "Red.", "objects": ["square"]},
        {"id": "missing", "images": ["img/nope.png"], "caption": "x"},
        {"id": "broken", "images": ["img/broken.png"], "caption": "x"},
        {"id": "nocap", "images": ["img/a.png"], "question": "Q?"},
        {"id": "noimg", "question": "Q?", "caption": "x"},
    ]
    records, skipped = load_source({"type": "jsonl", "path": str(write_jsonl(files / "data.jsonl", rows))})
    assert [r["id"] for r in records] == ["plain", "sharegpt", "7"]
    plain, sharegpt, by_image_id = records
    assert plain["images"] == [str(files / "img" / "a.png")] and plain["question"] == "What is it?"
    assert plain["source"] == "data"
    assert sharegpt["question"] == "Describe this image in detail."
    assert sharegpt["caption"] == "A blue square fills the frame." and "conversations" not in sharegpt
    assert by_image_id["caption"] == "Red." and by_image_id["objects"] == ["square"]
    assert by_image_id["question"] == "Describe the image in detail."  # the default question
    reasons = {s["id"]: s["reason"] for s in skipped}
    assert set(reasons) == {"missing", "broken", "nocap", "noimg"}
    assert "not found" in reasons["missing"] and "unreadable" in reasons["broken"]
    assert "no caption" in reasons["nocap"] and "no image" in reasons["noimg"]


def test_json_list_with_image_root_and_messages(files):
    rows = [{"id": "m", "images": ["a.png"], "caption": "c",
             "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi?"}]}]}]
    path = files / "data.json"
    path.write_text(json.dumps(rows))
    records, skipped = load_source({"type": "json", "path": str(path), "image_root": str(files / "img"),
                                    "source": "mine"})
    assert skipped == [] and records[0]["messages"] == rows[0]["messages"]
    assert records[0]["question"] == "Hi?"  # the messages' text: the pairs stage reads it
    assert records[0]["images"] == [str(files / "img" / "a.png")] and records[0]["source"] == "mine"


def test_video_frames_list_and_folder(files):
    rows = [{"id": "v1", "frames": [f"clip/{i:03d}.png" for i in range(5)], "caption": "frames"},
            {"id": "v2", "video": "clip", "caption": "a folder"},
            {"id": "v3", "frames": ["clip/000.png", "clip/zzz.png"], "caption": "one missing"}]
    path = write_jsonl(files / "video.jsonl", rows)
    records, skipped = load_source({"type": "video", "path": str(path), "max_frames": 3})
    assert [r["id"] for r in records] == ["v1", "v2"]
    assert [p.rsplit("/", 1)[1] for p in records[0]["images"]] == ["000.png", "001.png", "003.png"]
    assert records[1]["images"] == records[0]["images"]
    assert skipped[0]["id"] == "v3" and "zzz.png" in skipped[0]["reason"]


def test_hf_dataset_with_embedded_and_path_images(files):
    import datasets

    features = datasets.Features({"id": datasets.Value("string"), "images": datasets.Sequence(datasets.Image()),
                                  "caption": datasets.Value("string")})
    broken = {"bytes": b"garbage", "path": "x.png"}
    ds = datasets.Dataset.from_dict({"id": ["e", "bad"], "caption": ["red", "?"],
                                     "images": [[Image.new("RGB", (8, 8), "red")], [broken]]}, features=features)
    ds.save_to_disk(str(files / "ds"))
    records, skipped = load_source({"type": "hf", "path": str(files / "ds"), "image_dir": str(files / "out")})
    assert [r["id"] for r in records] == ["e"]
    with Image.open(records[0]["images"][0]) as im:
        assert im.convert("RGB").getpixel((0, 0)) == (255, 0, 0)
    assert skipped[0]["id"] == "bad" and "unreadable" in skipped[0]["reason"]
    with pytest.raises(ValueError, match="image_dir"):
        load_source({"type": "hf", "path": str(files / "ds")})

    # Path-valued columns (the caption-file shape saved as a dataset) resolve like JSONL.
    datasets.Dataset.from_dict({"image": [str(files / "img" / "a.png")], "caption": ["c"]}).save_to_disk(
        str(files / "ds2"))
    records, skipped = load_source({"type": "hf", "path": str(files / "ds2")})
    assert skipped == [] and records[0]["id"] == "ds2-000000"


def test_coco_captions_and_instances(files):
    png(files / "coco" / "COCO_val2014_000000000001.jpg")
    captions = {"images": [{"id": 1, "file_name": "COCO_val2014_000000000001.jpg"},
                           {"id": 2, "file_name": "COCO_val2014_000000000002.jpg"},
                           {"id": 3, "file_name": "COCO_val2014_000000000001.jpg"}],
                "annotations": [{"image_id": 1, "caption": "A dog on a couch"},
                                {"image_id": 1, "caption": "A brown dog sleeping. "},
                                {"image_id": 2, "caption": "A cat."}]}
    instances = {"categories": [{"id": 18, "name": "dog"}, {"id": 63, "name": "couch"}],
                 "annotations": [{"image_id": 1, "category_id": 63}, {"image_id": 1, "category_id": 18},
                                 {"image_id": 1, "category_id": 18}]}
    (files / "captions.json").write_text(json.dumps(captions))
    (files / "instances.json").write_text(json.dumps(instances))
    spec = {"type": "coco", "images": str(files / "coco"), "captions": str(files / "captions.json"),
            "instances": str(files / "instances.json")}
    records, skipped = load_source(spec)
    assert len(records) == 1
    rec = records[0]
    assert rec["id"] == "coco-1" and rec["caption"] == "A dog on a couch. A brown dog sleeping."
    assert rec["objects"] == ["couch", "dog"] and rec["source"] == "coco"
    assert {s["id"] for s in skipped} == {"coco-2", "coco-3"}


def test_toy_source(tmp_path):
    records, skipped = load_source({"type": "toy", "out": str(tmp_path), "n": 3, "split": "dpo"})
    assert skipped == [] and len(records) == 3 and all(r["objects"] and r["images"] for r in records)
    with pytest.raises(ValueError, match="unknown key"):
        load_source({"type": "toy", "out": str(tmp_path), "count": 3})


def test_bad_specs(tmp_path):
    with pytest.raises(ValueError, match="type"):
        load_source({"path": "x"})
    with pytest.raises(ValueError, match="unknown source type"):
        load_source({"type": "csv", "path": "x"})
    with pytest.raises(ValueError, match="needs 'path'"):
        load_source({"type": "jsonl"})
