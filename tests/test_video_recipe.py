"""recipes/llava_hound_video.yaml in native video mode: it validates, its source spec turns clips into native
video records the sampler feeds to a LLaVA-NeXT-Video, and its token counts are the benchmark's."""

import importlib.util
from pathlib import Path

import halign.recipes
import tiny_models  # tests/ is on sys.path

RECIPE = Path(halign.recipes.__file__).parent / "llava_hound_video.yaml"


def test_recipe_validates_in_native_video_mode(tmp_path):
    from halign.recipes.runner import run_recipe

    lines = []
    result = run_recipe(RECIPE, out=tmp_path / "run", dry_run=True, progress=False, log=lines.append)
    cfg = result["config"]
    assert cfg["model"] == "llava-hf/LLaVA-NeXT-Video-7B-hf"
    assert cfg["source"]["type"] == "video" and cfg["source"]["as"] == "video" and cfg["source"]["max_frames"] == 16
    assert [step["stage"] for step in result["plan"]] == ["sample", "judge", "pairs", "train", "eval"]
    assert all("does not exist on this machine" in note for note in result["notes"])  # only the data is missing
    assert not (tmp_path / "run").exists()


def test_recipe_source_gives_native_clips_the_model_reads(tmp_path):
    """The recipe's source spec on 20-frame toy clips: native video records of 16 evenly spaced frames, which the
    sampler turns into 16 x 4 video tokens on the tiny LLaVA-NeXT-Video (16 x 144 on the 7B)."""
    from halign.data_gen import toy_video
    from halign.data_gen.io import write_jsonl
    from halign.data_gen.sample import prompt_inputs
    from halign.data_gen.sources import load_source
    from halign.recipes.config import load_recipe

    cfg = toy_video.ToyVideoConfig(min_frames=20, max_frames=20)
    clips = toy_video.write_clips(cfg, "dpo", 2, tmp_path / "toy", as_video=False)
    rows = [{"video_id": c["id"], "frames": c["images"], "question": c["question"], "caption": c["caption"]}
            for c in clips]
    spec = {**load_recipe(RECIPE)["source"], "path": str(write_jsonl(tmp_path / "prompts.jsonl", rows)),
            "frame_dir": str(tmp_path / "frames")}
    records, skipped = load_source(spec)
    assert not skipped and [r["id"] for r in records] == [c["id"] for c in clips]
    for record, clip in zip(records, clips):
        assert record["images"] == [] and record["video"][0] == clip["images"][0] and len(record["video"]) == 16
        assert record["messages"][0]["content"][0] == {"type": "video"} and record["caption"] == clip["caption"]
    _, processor = tiny_models.build_family("llava_next_video")
    inputs, _ = prompt_inputs(processor, records, k=1)
    assert ((inputs["input_ids"] == processor.video_token_id).sum(dim=1) == 16 * 4).all()


def test_recipe_token_counts_are_the_benchmarks():
    import torch

    path = Path(__file__).parent / "benchmarks" / "video_tokens.py"
    spec = importlib.util.spec_from_file_location("video_tokens", path)
    video_tokens = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(video_tokens)
    processor = video_tokens.llava_next_video_processor()
    clip = torch.zeros((16, 360, 640, 3), dtype=torch.uint8)
    native, per_image, frames = video_tokens.llava_next_video_counts(processor, clip)
    assert (native, per_image) == (2304, 1948)
    text = RECIPE.read_text()
    assert f"{native:,} tokens as\n# a native video, against {frames} x {per_image:,} = {frames * per_image:,}" in text
