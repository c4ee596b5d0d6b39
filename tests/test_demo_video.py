"""`halign demo --video --quick` end to end on the quick video checkpoint: every stage runs for real on native
video clips, the report has before/after tables of both video metrics, and the test clips are held out from
every clip a judge saw (and from the gate's)."""

import json

import pytest

from halign.recipes.cli import main


@pytest.fixture(scope="module")
def video_demo(tmp_path_factory, halign_cache):
    out = tmp_path_factory.mktemp("demo_video")
    code = main(["demo", "--video", "--quick", "--out", str(out / "run"), "--json", str(out / "report.json"),
                 "--no-progress"])
    assert code == 0
    return out


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_video_demo_reports_both_metrics_before_and_after(video_demo):
    report = json.loads((video_demo / "report.json").read_text())
    for side in ("before", "after"):
        assert set(report[side]) >= {"chair_s", "chair_i", "recall", "mean_len", "n"}  # toy_video
        assert report[side]["n"] == 6 and 0 <= report[side]["chair_i"] <= 1
        assert {"accuracy", "yes_ratio", "exists_accuracy"} <= set(report["qa"][side])  # toy_video_qa
        assert 0 <= report["qa"][side]["accuracy"] <= 1
    assert report["kept_round"] == report["gate"]["chosen_round"] in (0, 1)
    assert [r["round"] for r in report["rounds"]] == [0, 1] and "qa_accuracy" in report["rounds"][0]
    assert report["pairs_per_round"][0] > 0 and report["judge"]["name"] == "grounding"
    run = video_demo / "run"
    first = json.loads((run / "round_1" / "eval" / "report_before.json").read_text())
    assert first["benchmark"] == "toy_video_chair"
    assert json.loads((run / "round_1" / "eval" / "qa_before.json").read_text())["benchmark"] == "toy_video_qa"
    assert (run / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_video_demo_page_has_the_clip_questions(video_demo):
    """The run's report page carries the clip-question panel (the `qa_*` reports), whichever round was kept."""
    from test_html_report import page_data  # tests/ is on sys.path (pytest's default "prepend" import mode)

    report = json.loads((video_demo / "report.json").read_text())
    data = page_data(video_demo / "run" / "report.html")
    if report["kept_round"]:
        questions = json.loads((video_demo / "run" / "round_1" / "eval" / "qa_before.json").read_text())
        assert data["labels"] == ["before", f"round {report['kept_round']} (kept)"]
    else:
        questions = json.loads((video_demo / "run" / "validation" / "round_0" / "qa.json").read_text())
        assert data["labels"][0] == "round 0 (kept, validation)"
    assert data["pope"]["n"] == len(questions["per_item"]) > 0


def test_video_demo_ran_every_stage_on_native_video(video_demo):
    run = video_demo / "run" / "round_1"
    for stage in ("sample", "judge", "pairs", "train"):
        assert json.loads((run / stage / "manifest.json").read_text())["stage"] == stage
    prompts = read_jsonl(run / "source" / "prompts.jsonl")
    assert prompts and all(p["video"] and p["images"] == [] and p["question"] for p in prompts)
    judgments = read_jsonl(run / "judge" / "judgments.jsonl")
    assert judgments and all(j["error"] is None for j in judgments)


def test_eval_clips_are_disjoint_from_judged_and_validation_clips(video_demo):
    run = video_demo / "run"
    judged = read_jsonl(run / "round_1" / "sample" / "prompts.jsonl")
    test = read_jsonl(run / "round_1" / "eval" / "source" / "prompts.jsonl")
    validation = read_jsonl(run / "validation" / "source" / "prompts.jsonl")
    assert len(test) == 6 and len(validation) == 6 and judged
    # Held out by id and by content: no test clip shows the tracks of a judged or a validation clip.
    for other in (judged, validation):
        assert not {r["id"] for r in test} & {r["id"] for r in other}
        assert not {json.dumps(r["ground_truth"], sort_keys=True) for r in test} & \
            {json.dumps(r["ground_truth"], sort_keys=True) for r in other}
    judged_ids = {j["prompt_id"] for j in read_jsonl(run / "round_1" / "judge" / "judgments.jsonl")}
    assert not judged_ids & {r["id"] for r in test + validation}


def test_video_recipe_is_the_demo():
    """recipes/demo_video.yaml is the run `halign demo --video` makes (same resolved config)."""
    from halign.recipes import config
    from halign.recipes.demo_video import VideoDemoConfig

    assert config.resolve(config.load_recipe("demo_video.yaml")) == config.resolve(VideoDemoConfig().recipe())


def test_video_demo_refuses_image_options(tmp_path, capsys):
    assert main(["demo", "--video", "--quick", "--qa-fraction", "0.5", "--out", str(tmp_path / "run")]) != 0
    assert "--qa-fraction is an image-demo option" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
