"""The moving toy world (`halign.data_gen.toy_video`): deterministic clips, captions that name exactly the
clip's objects in order of appearance, temporal answers recomputed from the tracks, drawn frames that show
what the tracks say, co-occurrence-biased SFT captions."""

from __future__ import annotations

import re

import numpy as np
import pytest

from halign.data_gen.toy_video import (
    ToyVideoConfig, detailed_caption, draw_frames, make_clip, make_clips, track_cell, track_phrase, write_clips,
)
from halign.data_gen.toy_world import BACKGROUND, COLORS, SHAPES, ToyWorldConfig

CFG = ToyVideoConfig()


def test_same_seed_same_clip_different_seed_different_clips():
    a, b = make_clip(CFG, "train", 3), make_clip(CFG, "train", 3)
    assert a == b
    assert [np.asarray(f).tobytes() for f in draw_frames(CFG, a)] == [np.asarray(f).tobytes() for f in draw_frames(CFG, b)]
    other = ToyVideoConfig(world=ToyWorldConfig(seed=1))
    assert [c.tracks for c in make_clips(CFG, "train", 5)] != [c.tracks for c in make_clips(other, "train", 5)]
    assert make_clip(CFG, "train", 0).tracks != make_clip(CFG, "eval", 0).tracks  # splits do not share clips


def test_clip_shape_rules():
    for clip in make_clips(CFG, "train", 40):
        assert CFG.min_frames <= clip.num_frames <= CFG.max_frames
        assert CFG.min_objects <= len(clip.tracks) <= CFG.max_objects
        enters = [t.enter for t in clip.tracks]
        assert enters == sorted(set(enters))  # in order of appearance, never two on one frame
        assert len(set(clip.appearance_order)) == len(clip.tracks)
        for t in clip.tracks:
            assert t.leave - t.enter >= CFG.min_visible and t.leave <= clip.num_frames


def test_caption_names_the_objects_in_order_of_appearance():
    words = "|".join(SHAPES)
    for clip in make_clips(CFG, "train", 40):
        caption = detailed_caption(CFG, clip)
        mentioned = re.findall(rf"\b({words})\b", caption)
        assert mentioned == clip.appearance_order, caption
        for t in clip.tracks:
            assert f"a {t.color} {t.shape}" in caption
        leaving = [t.shape for t in clip.tracks if t.leave < clip.num_frames]
        assert caption.count("and then leaves") == len(leaving)


def test_temporal_answers_follow_the_tracks():
    kinds = set()
    for clip in make_clips(CFG, "train", 60):
        enter = {t.shape: t.enter for t in clip.tracks}
        stays = {t.shape: t.leave == clip.num_frames for t in clip.tracks}
        for q in clip.questions:
            kinds.add(q["kind"])
            if q["kind"] in ("order", "order_absent"):
                later, earlier = re.fullmatch(r"Does the (\w+) appear after the (\w+)\?", q["question"]).groups()
                truth = later in enter and earlier in enter and enter[later] > enter[earlier]
            elif q["kind"] == "still_there":
                truth = stays[q["objects"][0]]
            else:
                truth = q["objects"][0] in enter
                if q["kind"] == "exists_partner":  # adversarial: a partner of a shape on screen, itself absent
                    assert any(q["objects"][0] in CFG.world.partners[s] for s in enter) and not truth, (clip.id, q)
            assert q["answer"] == ("Yes" if truth else "No"), (clip.id, q)
    assert kinds == {"order", "order_absent", "still_there", "exists", "exists_partner"}


def test_frames_show_the_tracks():
    for clip in make_clips(CFG, "train", 10):
        for index, frame in enumerate(draw_frames(CFG, clip)):
            pixels = np.asarray(frame).reshape(-1, 3)
            visible = [t for t in clip.tracks if t.visible(index)]
            blank = bool((pixels == BACKGROUND).all())
            assert blank == (not visible), (clip.id, index)
            if visible:  # the last visible track is drawn on top, so its colour is on screen
                assert (pixels == COLORS[visible[-1].color]).all(axis=1).any()


def test_noisy_captions_hallucinate_absent_partners():
    clips = make_clips(CFG, "train", 200)
    biased = [c for c in clips if c.hallucinated_in_noisy]
    assert len(biased) > 20  # bias_rate 0.7 on every clip with a lone co-occurrence member
    partners = CFG.world.partners
    for clip in biased:
        for shape in clip.hallucinated_in_noisy:
            assert shape not in clip.appearance_order and shape in clip.noisy_caption
            assert any(shape in partners[s] for s in clip.appearance_order)
    for clip in clips:
        for shape in clip.appearance_order:
            assert shape in clip.noisy_caption


@pytest.mark.parametrize("as_video", [True, False])
def test_write_clips_records(tmp_path, as_video):
    records = write_clips(CFG, "dpo", 3, tmp_path, as_video=as_video)
    assert [r["id"] for r in records] == [f"toyvid-dpo-{i:06d}" for i in range(3)]
    for record, clip in zip(records, make_clips(CFG, "dpo", 3)):
        frames = record["video"] if as_video else record["images"]
        assert len(frames) == clip.num_frames and all(p.endswith(".png") for p in frames)
        assert record["objects"] == clip.categories and record["caption"] == detailed_caption(CFG, clip)
        assert record["video_fps"] == CFG.fps
        if as_video:
            assert record["images"] == [] and record["messages"][0]["content"][0] == {"type": "video"}
        else:
            assert "video" not in record and "messages" not in record


def test_bad_configs():
    with pytest.raises(ValueError, match="min_frames"):
        ToyVideoConfig(min_frames=9, max_frames=8)
    with pytest.raises(ValueError, match="min_visible"):
        ToyVideoConfig(min_frames=4, max_objects=4, min_visible=3)


def test_toy_video_source_feeds_native_video_inputs(tmp_path):
    """The whole path: the toy_video source writes clips, their frames become Qwen2-VL video inputs
    (without torchvision), and a tiny Qwen2-VL runs on them."""
    import torch
    from PIL import Image

    import tiny_models  # tests/ is on sys.path
    from halign.align.video_processor import build_video_inputs
    from halign.data_gen.sources import load_source

    records, skipped = load_source({"type": "toy_video", "out": str(tmp_path), "n": 2, "as": "video"})
    assert skipped == [] and all(r["video"] and r["images"] == [] for r in records)
    model, processor = tiny_models.build_family("qwen2_vl")
    frames = [Image.open(p) for p in records[0]["video"]]
    text = "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>describe<|im_end|>\n"
    inputs = build_video_inputs(processor, text, [frames], fps=records[0]["video_fps"])
    grid_t = (len(frames) + 1) // 2  # two frames per temporal patch, an odd clip padded
    # 48 x 48 frames shrunk to the tiny processor's 32 x 32 pixel cap, in 4-pixel patches merged 2 x 2
    assert inputs["video_grid_thw"].tolist() == [[grid_t, 8, 8]]
    assert int((inputs["input_ids"] == processor.video_token_id).sum()) == grid_t * 16
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()
    with pytest.raises(ValueError, match="unknown key"):
        load_source({"type": "toy_video", "out": str(tmp_path), "frames": 3})


def test_shapes_move_from_cell_to_cell_one_shape_a_cell():
    """Each frame shows a visible track whole at the centre of the cell its path has reached, never two in one
    cell; tracks still move (many visit several cells), and the caption's "from ... to" cells are the cells
    of the track's first and last frames."""
    cell = CFG.world.image_size // CFG.world.grid
    cells_visited = []
    for clip in make_clips(CFG, "train", 60):
        for index, frame in enumerate(draw_frames(CFG, clip)):
            pixels = np.asarray(frame)
            visible = [t for t in clip.tracks if t.visible(index)]
            cells = [track_cell(CFG, t, index) for t in visible]
            assert len(set(cells)) == len(cells), (clip.id, index)
            for t, (row, col) in zip(visible, cells):
                centre = pixels[row * cell + cell // 2, col * cell + cell // 2]
                assert tuple(centre) == COLORS[t.color], (clip.id, index, t.shape)
        for t in clip.tracks:
            cells_visited.append(len({track_cell(CFG, t, f) for f in range(t.enter, t.leave)}))
            phrase = track_phrase(CFG, t, clip.num_frames)
            first, last = track_cell(CFG, t, t.enter), track_cell(CFG, t, t.leave - 1)
            assert ("stays" in phrase) == (first == last), phrase
    assert sum(n > 1 for n in cells_visited) > len(cells_visited) / 2
