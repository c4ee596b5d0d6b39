"""The `video` prompt source: fps / max_frames sampling, video files decoded with PyAV, frames kept as a
native video record (`as: video`) or as several images (the default, also in tests/test_sources.py)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image

from halign.data_gen.messages import user_messages
from halign.data_gen.sources import load_source
from halign.data_gen.video_frames import NO_PYAV, decode_video, sample_indices


def write_frames(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (16, 16), (i * 20, 0, 0)).save(folder / f"{i:03d}.png")
    return folder


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_video(path, n_frames=12, fps=6, size=(32, 32)):
    """A clip whose frame i is grey level 20 * i, so a decoded frame tells which one it was."""
    av = pytest.importorskip("av", reason="PyAV is not installed (pip install av): video files are not tested")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.options = {"qscale": "1"}  # near-lossless, so grey levels survive the codec
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(np.full((size[1], size[0], 3), 20 * i, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def grey(path):
    with Image.open(path) as im:
        return int(np.asarray(im.convert("L")).mean().round())


def test_sample_indices_rules():
    assert sample_indices(10) == list(range(10))
    assert sample_indices(10, max_frames=4) == [0, 2, 5, 7]
    assert sample_indices(12, clip_fps=6, fps=2) == [0, 3, 6, 9]  # every third frame
    assert sample_indices(12, clip_fps=6, fps=12) == list(range(12))  # never adds frames
    assert sample_indices(30, clip_fps=10, fps=5, max_frames=5) == [0, 6, 12, 18, 24]
    with pytest.raises(ValueError, match="frame rate"):
        sample_indices(10, fps=2)


def test_frame_folder_as_native_video(tmp_path):
    write_frames(tmp_path / "clip", 8)
    rows = [{"id": "v", "video": "clip", "caption": "a red fade", "video_fps": 4}]
    spec = {"type": "video", "path": str(write_jsonl(tmp_path / "v.jsonl", rows)), "fps": 2, "as": "video"}
    (record,), skipped = load_source(spec)
    assert skipped == []
    assert [p.rsplit("/", 1)[1] for p in record["video"]] == ["000.png", "002.png", "004.png", "006.png"]
    assert record["images"] == [] and record["video_fps"] == 2.0
    assert record["question"] == "Describe the image in detail."
    assert record["messages"] == [{"role": "user", "content": [{"type": "video"},
                                                               {"type": "text", "text": record["question"]}]}]
    assert user_messages(record) == record["messages"]


def test_frames_as_images_stays_the_default(tmp_path):
    write_frames(tmp_path / "clip", 6)
    spec = {"type": "video", "path": str(write_jsonl(tmp_path / "v.jsonl", [{"id": "v", "video": "clip",
                                                                              "caption": "c"}])), "max_frames": 3}
    (record,), _ = load_source(spec)
    assert len(record["images"]) == 3 and "video" not in record and "messages" not in record
    assert [part["type"] for part in user_messages(record)[0]["content"]] == ["image"] * 3 + ["text"]


def test_fps_without_a_rate_skips_frame_files(tmp_path):
    write_frames(tmp_path / "clip", 4)
    spec = {"type": "video", "path": str(write_jsonl(tmp_path / "v.jsonl", [{"id": "v", "video": "clip",
                                                                              "caption": "c"}])), "fps": 1}
    records, skipped = load_source(spec)
    assert records == [] and "video_fps" in skipped[0]["reason"]


def test_native_messages_need_a_video_part(tmp_path):
    write_frames(tmp_path / "clip", 2)
    with_part = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What moves?"}]}]
    without = [{"role": "user", "content": [{"type": "text", "text": "What moves?"}]}]
    rows = [{"id": "ok", "video": "clip", "caption": "c", "messages": with_part},
            {"id": "bad", "video": "clip", "caption": "c", "messages": without}]
    records, skipped = load_source({"type": "video", "path": str(write_jsonl(tmp_path / "v.jsonl", rows)),
                                    "as": "video"})
    assert [r["id"] for r in records] == ["ok"] and records[0]["messages"] == with_part
    assert skipped[0]["id"] == "bad" and "video" in skipped[0]["reason"]


def test_bad_modes(tmp_path):
    with pytest.raises(ValueError, match="'as'"):
        load_source({"type": "video", "path": "x.jsonl", "as": "clip"})
    with pytest.raises(ValueError, match="'as'"):
        load_source({"type": "jsonl", "path": "x.jsonl", "as": "video"})


def test_video_file_decoded_and_sampled(tmp_path):
    write_video(tmp_path / "clip.mp4", n_frames=12, fps=6)
    rows = [{"video_id": "c1", "video": "clip.mp4", "caption": "grey ramp"},
            {"video_id": "gone", "video": "missing.mp4", "caption": "x"},
            {"video_id": "junk", "video": "junk.mp4", "caption": "x"}]
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all")
    spec = {"type": "video", "path": str(write_jsonl(tmp_path / "v.jsonl", rows)), "fps": 2, "max_frames": 3,
            "frame_dir": str(tmp_path / "frames"), "as": "video"}
    records, skipped = load_source(spec)
    assert [r["id"] for r in records] == ["c1"]
    (record,) = records
    # 12 frames at 6 fps -> every third frame (0, 3, 6, 9) -> at most 3 evenly spaced (0, 3, 6)
    assert [p.rsplit("/", 2)[1:] for p in record["video"]] == [["c1", f"{i:06d}.png"] for i in (0, 3, 6)]
    assert [grey(p) for p in record["video"]] == pytest.approx([0, 60, 120], abs=3)
    assert record["video_fps"] == pytest.approx(3 / 12 * 6)
    reasons = {s["id"]: s["reason"] for s in skipped}
    assert "not found" in reasons["gone"] and "junk.mp4" in reasons["junk"]
    with pytest.raises(ValueError, match="frame_dir"):
        load_source({**spec, "frame_dir": None})


def test_missing_pyav_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # import av now raises ImportError
    (tmp_path / "clip.mp4").write_bytes(b"")
    with pytest.raises(ImportError, match="pip install av") as err:
        decode_video(tmp_path / "clip.mp4", tmp_path / "out")
    assert str(err.value) == NO_PYAV


def test_native_messages_keep_their_question_for_the_pairs(tmp_path):
    """A row given as chat messages keeps `question` (their text): the pairs stage builds the prompt turn
    from it, and used to fail with a KeyError."""
    from halign.data_gen.pairs import PairsConfig, build_pairs

    write_frames(tmp_path / "clip", 2)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What moves?"}]}]
    rows = [{"id": "v", "video": "clip", "caption": "c", "messages": messages},
            {"id": "empty", "video": "clip", "caption": "c", "messages": [{"role": "user", "content": [{"type": "video"}]}]}]
    records, skipped = load_source({"type": "video", "path": str(write_jsonl(tmp_path / "v.jsonl", rows)),
                                    "as": "video"})
    (record,) = records
    assert record["question"] == "What moves?" and record["messages"] == messages
    assert skipped == [{"id": "empty", "reason": "record 'empty': its messages have no user turn with text "
                                                 "(the question)"}]
    candidates = [{"id": "v#0", "prompt_id": "v", "text": "a star"}, {"id": "v#1", "prompt_id": "v", "text": "x"}]
    judgments = [{"candidate_id": "v#0", "score": 1.0, "judge": "g"}, {"candidate_id": "v#1", "score": -1.0, "judge": "g"}]
    pairs, _ = build_pairs(PairsConfig(), {"v": record}, candidates, judgments)
    assert pairs[0]["prompt"] == [{"role": "user", "content": "What moves?"}]
    assert pairs[0]["video_paths"] == [record["video"]]


def test_pairs_name_a_prompt_without_question():
    from halign.data_gen.pairs import PairsConfig, build_pairs

    candidates = [{"id": "v#0", "prompt_id": "v", "text": "a"}, {"id": "v#1", "prompt_id": "v", "text": "b"}]
    judgments = [{"candidate_id": "v#0", "score": 1.0}, {"candidate_id": "v#1", "score": -1.0}]
    with pytest.raises(ValueError, match="prompt record 'v' has no 'question'"):
        build_pairs(PairsConfig(), {"v": {"id": "v", "video": ["f.png"], "messages": []}}, candidates, judgments)
