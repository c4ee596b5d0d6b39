"""Sampling and judging native video prompts (data_gen/sample.py, data_gen/messages.py), then pairs and DPO.

Toy clips of the moving toy world (data_gen/toy_video.py, 10-15 frames each) go through `halign sample` with
a tiny random Qwen2.5-VL or LLaVA-NeXT-Video, the caption judge (against the fake judge server, which scores a
response by its words missing from the caption it was sent), `halign pairs` and one DPO step on the packed fast
path and on trl's path.
"""

import json

import pytest
import torch

import tiny_models  # tests/ is on sys.path
from fake_judge_server import FakeJudgeServer, verdict_for

FAMILIES = ["qwen2_5_vl", "llava_next_video"]


def toy_clips(root, n=3):
    from halign.data_gen import toy_video

    return toy_video.write_clips(toy_video.ToyVideoConfig(), "dpo", n, root / "clips")


def test_a_question_record_with_a_video_gets_a_video_part():
    from halign.data_gen.messages import load_video, user_messages

    record = {"id": "v", "question": "what is there ?", "video": ["a.png"], "images": ["b.png"]}
    assert [p["type"] for p in user_messages(record)[0]["content"]] == ["video", "image", "text"]
    with pytest.raises(ValueError, match="record 'v': cannot read video frame a.png"):
        load_video(record)
    with pytest.raises(ValueError, match="list of frame paths"):
        load_video({"id": "v", "video": "clip.mp4"})
    assert load_video({"id": "still"}) is None


@pytest.mark.parametrize("family", FAMILIES)
def test_each_clip_reaches_its_own_rows(family, tmp_path):
    """A batch of clips of 10-15 frames with k answers each: every generated row starts from exactly the
    logits of its record generated alone (LLaVA-NeXT-Video lays clips of different lengths end to end, so a
    row paired with the wrong clip would differ)."""
    from halign.data_gen.sample import prompt_inputs

    model, processor = tiny_models.build_family(family)
    model.eval()
    records = toy_clips(tmp_path)
    assert len({len(r["video"]) for r in records}) > 1
    inputs, copies = prompt_inputs(processor, records, k=2)
    assert copies == 1 and inputs["input_ids"].shape[0] == 2 * len(records)
    video_tokens = (inputs["input_ids"] == processor.video_token_id).sum(dim=1)
    assert (video_tokens > 0).all()

    def first_logits(batch_inputs):
        out = model.generate(**batch_inputs, max_new_tokens=1, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=processor.tokenizer.pad_token_id)
        return out.logits[0]

    together = first_logits(inputs)
    for i, record in enumerate(records):
        alone = first_logits(prompt_inputs(processor, [record], k=1)[0])[0]
        for row in (2 * i, 2 * i + 1):
            assert torch.allclose(together[row], alone, atol=1e-4), (record["id"], row)


def test_a_model_without_native_video_is_refused_naming_the_records(tmp_path):
    from halign.data_gen.sample import prompt_inputs

    _, processor = tiny_models.build_family("llava")  # LLaVA 1.5 reads images only
    records = toy_clips(tmp_path, n=2)
    with pytest.raises(ValueError, match=f"video records \\['{records[0]['id']}', '{records[1]['id']}'\\]"):
        prompt_inputs(processor, records, k=2)


def test_vllm_backend_refuses_native_video(tmp_path):
    from halign.data_gen.io import write_jsonl
    from halign.data_gen.sample import SampleConfig, run

    prompts = write_jsonl(tmp_path / "prompts.jsonl", toy_clips(tmp_path, n=1))
    with pytest.raises(ValueError, match="native video"):
        run(SampleConfig(model="unused", backend="vllm", k=2), prompts, tmp_path / "sample")


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_judge_pairs_train_on_toy_clips(family, tmp_path):
    from halign.align.dpo import TrainConfig, train
    from halign.data_gen.io import read_records, write_jsonl
    from halign.data_gen.pairs import PairsConfig
    from halign.data_gen.pairs import run as run_pairs
    from halign.data_gen.sample import SampleConfig
    from halign.data_gen.sample import run as run_sample
    from halign.rewards.judges.cli import run_judge

    ckpt = tiny_models.save_family(family, tmp_path / "ckpt")
    records = toy_clips(tmp_path)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", records)
    candidates = run_sample(SampleConfig(model=str(ckpt), k=4, max_new_tokens=8, batch_size=2), prompts,
                            tmp_path / "sample", progress=False)
    written = {r["id"]: r for r in read_records(tmp_path / "sample" / "prompts.jsonl")}
    assert {i: r["video"] for i, r in written.items()} == {r["id"]: r["video"] for r in records}
    sampled = read_records(candidates)
    assert {c["prompt_id"] for c in sampled} == set(written)

    with FakeJudgeServer() as server:
        _, judgments, _ = run_judge("caption", candidates, tmp_path / "judge" / "judgments.jsonl",
                                    options={"base_url": server.url, "model": "fake", "cache_dir": str(tmp_path / "c")},
                                    progress=False)
    by_id = {c["id"]: c for c in sampled}
    for judgment in judgments:  # each answer was judged against its own clip's detailed caption
        candidate = by_id[judgment["candidate_id"]]
        expected = verdict_for(written[candidate["prompt_id"]]["caption"], candidate["text"])["score"]
        assert judgment["score"] == expected, judgment

    pairs = run_pairs(PairsConfig(strategy="best_vs_worst", min_gap=0.1), tmp_path / "judge" / "judgments.jsonl",
                      candidates, tmp_path / "sample" / "prompts.jsonl", tmp_path / "pairs")
    import datasets

    dataset = datasets.load_from_disk(str(tmp_path / "pairs" / "dataset"))
    assert "videos" in dataset.column_names and dataset.num_rows >= 1
    row = dataset[0]
    assert len(row["videos"]) == 1 and len(row["videos"][0]) == len(written[row["prompt_id"]]["video"])
    assert row["video_fps"] == [written[row["prompt_id"]]["video_fps"]]

    for fast in (True, False):
        out = train(TrainConfig(model=str(ckpt), pairs=str(pairs.parent / "dataset"), fast=fast,
                                output_dir=str(tmp_path / ("fast" if fast else "trl")),
                                dpo={"max_steps": 1, "per_device_train_batch_size": 2, "logging_steps": 1}),
                    progress=False)
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["trainer"] == ("FastVisionDPOTrainer" if fast else "DPOTrainer")
        assert manifest["steps"] == 1 and manifest["final_loss"] is not None


def test_caption_judge_tells_the_judge_about_a_video(tmp_path):
    """Video prompts are judged from their clip's caption with the video templates; image prompts as before."""
    from halign.rewards.judges.caption import CaptionJudge, load_template
    from halign.rewards.judges.endpoint import JudgeResult

    judge = CaptionJudge(base_url="http://127.0.0.1:9/v1", model="fake", cache_dir=tmp_path / "cache", progress=False)
    sent = []

    def run(requests, progress=True, on_result=None):  # records what would be sent; answers nothing
        sent.extend(requests)
        return [JudgeResult(parsed=None, error="not sent") for _ in requests]

    judge.client.run = run
    prompts = {"v": {"id": "v", "video": ["f0.png", "f1.png"], "question": "Describe the video.",
                     "caption": "A red star appears, then leaves."},
               "i": {"id": "i", "images": ["a.png"], "question": "Describe the image.", "caption": "A red star."}}
    candidates = [{"id": "v#0", "prompt_id": "v", "text": "a star"}, {"id": "i#0", "prompt_id": "i", "text": "a star"}]
    judge.judge(candidates, prompts)
    judge.judge_pairs([(candidates[0], {"id": "v#1", "prompt_id": "v", "text": "a cat"})], prompts)
    video, image, video_pair = (request.messages[0]["content"] for request in sent)
    assert video == load_template("caption_judge_video_v1").system and "events in the wrong order" in video
    assert image == load_template("caption_judge_v1").system
    assert video_pair == load_template("caption_judge_video_pairwise_v1").system
    assert "A red star appears, then leaves." in sent[0].messages[1]["content"]
    assert judge.manifest_info()["video_template_sha256"] == load_template("caption_judge_video_v1").sha256
