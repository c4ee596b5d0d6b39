"""The moving toy world's metrics (rewards/toy_video_metrics.py) on hand-made responses."""

import pytest

from halign.rewards.metrics import OBJECTS, YES_NO, metric_spec


def clip(clip_id, objects, questions=()):
    return {"id": clip_id, "objects": objects, "video": [f"{clip_id}/000.png", f"{clip_id}/001.png"],
            "video_fps": 4.0, "questions": list(questions), "source": "toy_video",
            "messages": [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Describe the video."}]}]}


def q(kind, question, objects, answer):
    return {"kind": kind, "question": question, "objects": objects, "answer": answer}


def test_object_hallucination_over_the_clip():
    metric = metric_spec("toy_video").build()
    references = {"a": clip("a", ["circle", "star"]), "b": clip("b", ["triangle"])}
    responses = [
        {"id": "a", "text": "a red circle, a blue square and a green star."},  # square: the circle's partner
        {"id": "b", "text": "a yellow triangle."},
        {"id": "nowhere", "text": "a star."},
    ]
    report = metric.score(responses, references)
    assert report["benchmark"] == "toy_video_chair" and report["missing_ids"] == ["nowhere"]
    m = report["metrics"]
    assert m["chair_s"] == pytest.approx(1 / 2) and m["chair_i"] == pytest.approx(1 / 4)
    assert m["recall"] == pytest.approx(3 / 3) and m["n"] == 2
    assert report["per_item"][0]["hallucinated"] == ["square"]


def test_question_prompts_ask_each_question_with_its_clip():
    from halign.data_gen.messages import user_messages
    from halign.rewards.toy_video_metrics import question_prompts

    record = clip("a", ["circle", "star"], [
        q("order", "Does the star appear after the circle?", ["star", "circle"], "Yes"),
        q("exists", "Is there a square in the video?", ["square"], "No")])
    prompts = question_prompts([record])
    assert [p["id"] for p in prompts] == ["a-q0", "a-q1"]
    assert [p["label"] for p in prompts] == ["yes", "no"] and prompts[0]["video"] == record["video"]
    content = user_messages(prompts[1])[0]["content"]  # the question, not the clip's caption prompt
    assert content == [{"type": "video"}, {"type": "text", "text": "Is there a square in the video?"}]
    with pytest.raises(ValueError, match="has no 'questions'"):
        question_prompts([{"id": "x", "video": ["f.png"]}])
    with pytest.raises(ValueError, match="has no 'video'"):
        question_prompts([{"id": "x", "questions": []}])


def test_question_accuracy_and_yes_ratio_per_kind():
    from halign.rewards.toy_video_metrics import question_prompts

    record = clip("a", ["circle", "star"], [
        q("order", "Does the star appear after the circle?", ["star", "circle"], "Yes"),
        q("order", "Does the circle appear after the star?", ["circle", "star"], "No"),
        q("order_absent", "Does the square appear after the circle?", ["square", "circle"], "No"),
        q("still_there", "Is the star still there at the end of the video?", ["star"], "Yes"),
        q("exists", "Is there a star in the video?", ["star"], "Yes"),
        q("exists", "Is there a cross in the video?", ["cross"], "No"),
        q("exists_partner", "Is there a square in the video?", ["square"], "No")])
    references = {p["id"]: p for p in question_prompts([record])}
    answers = ["Yes.", "Yes.", "Yes.", "No.", "Yes.", "No.", "No."]  # fooled by order and the absent partner
    report = metric_spec("toy_video_qa").build().score(
        [{"id": f"a-q{j}", "text": text} for j, text in enumerate(answers)], references)
    kinds, m = report["kinds"], report["metrics"]
    assert list(kinds) == ["order", "order_absent", "still_there", "exists", "exists_partner"]
    assert kinds["order"] == {"accuracy": 0.5, "yes_ratio": 1.0, "n": 2}
    assert kinds["order_absent"] == {"accuracy": 0.0, "yes_ratio": 1.0, "n": 1}
    assert kinds["still_there"] == {"accuracy": 0.0, "yes_ratio": 0.0, "n": 1}
    assert kinds["exists"] == {"accuracy": 1.0, "yes_ratio": 0.5, "n": 2}
    assert kinds["exists_partner"] == {"accuracy": 1.0, "yes_ratio": 0.0, "n": 1}
    assert m["accuracy"] == pytest.approx((0.5 + 0 + 0 + 1 + 1) / 5) and m["yes_ratio"] == pytest.approx(2.5 / 5)
    assert m["order_absent_accuracy"] == 0.0 and m["exists_partner_accuracy"] == 1.0 and m["n"] == 7
    assert [p["correct"] for p in report["per_item"]] == [True, False, False, False, True, True, True]


def test_registry_entries():
    chair, qa = metric_spec("toy_video"), metric_spec("toy_video_qa")
    assert chair.item_kind == OBJECTS and chair.direction("chair_i") == "lower"
    assert qa.item_kind == YES_NO and qa.direction("order_absent_accuracy") == "higher"
    assert chair.build().name == chair.benchmark and qa.build().name == qa.benchmark
    assert chair.options() == set() and qa.options() == set()
