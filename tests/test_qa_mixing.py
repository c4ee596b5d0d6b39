"""Yes/no existence questions in the RLAIF rounds: the grounding judge scores their answers against ground
truth, and the toy world mixes a fraction of them into a round's training prompts (never into eval)."""

import json

import pytest

from halign.recipes.rlaif import TOY_QA_FRACTION, RlaifConfig, _round_prompts
from halign.data_gen import toy_world
from halign.data_gen.pairs import PairsConfig, build_pairs
from halign.recipes import config as recipe_config
from halign.recipes.demo import DemoConfig
from halign.recipes.inputs import source_identity, write_source
from halign.rewards.judges.grounding import GroundingJudge, existence_object, question_text
from halign.rewards.object_hallucination import ObjectVocabulary, score_item

TOY_VOCAB = toy_world.ToyWorldConfig().vocabulary()
TRUTH = ["circle", "star"]  # what the scene holds
PROMPTS = {
    "present": {"question": "Is there a star in the image?", "objects": TRUTH},
    "absent": {"question": "Is there a square in the image?", "objects": TRUTH},
    "caption": {"question": "Describe the image.", "objects": TRUTH},
    "two": {"question": "Is there a circle or a square in the image?", "objects": TRUTH},
    "count": {"question": "Are there two stars in the image?", "objects": TRUTH},
    "chat": {"messages": [{"role": "user", "content": [{"type": "image"},
                                                        {"type": "text", "text": "Is there a square in the image?"}]}],
             "objects": TRUTH},
}


def judge_one(prompt_id: str, text: str, weight: float = 3.0) -> dict:
    judge = GroundingJudge("toy", hallucination_weight=weight)
    return judge.judge([{"id": f"{prompt_id}#0", "prompt_id": prompt_id, "text": text}], PROMPTS)[0]


@pytest.mark.parametrize("prompt_id, text, score, hallucinated, covered, denied", [
    ("present", "Yes.", 1.0, [], ["star"], []),        # right yes
    ("present", "No.", -3.0, [], [], ["star"]),        # wrong no: denies a present object
    ("absent", "No.", 1.0, [], [], []),                # right no
    ("absent", "Yes.", -3.0, ["square"], [], []),      # wrong yes: affirms an absent object (hallucination)
    ("absent", "There is no square.", 1.0, [], [], []),  # a sentence about the object is an answer too
    ("chat", "Yes, there is.", -3.0, ["square"], [], []),  # the question read from chat messages
])
def test_existence_answers_score_plus_one_or_minus_weight(prompt_id, text, score, hallucinated, covered, denied):
    j = judge_one(prompt_id, text)
    assert (j["score"], j["hallucinated"], j["covered"], j["denied"]) == (score, hallucinated, covered, denied)
    assert j["qa"]["correct"] == (score == 1.0) and j["error"] is None
    assert len(j["claims"]) == 1 and j["claims"][0]["verdict"] == (score == 1.0)


@pytest.mark.parametrize("text", ["a red circle and a blue triangle.", "", "   "])
def test_a_response_that_does_not_answer_scores_as_a_wrong_answer(text):
    # POPE's parser would read these as "yes"; the judge does not reward them, and still counts inventions.
    j = judge_one("absent", text)
    assert j["score"] == -3.0 and j["qa"]["answer"] is None and not j["qa"]["correct"]
    assert j["hallucinated"] == score_item(text, TRUTH, ObjectVocabulary.from_categories(TOY_VOCAB))["hallucinated"]
    assert j["hallucinated"] == (["triangle"] if "triangle" in text else [])


@pytest.mark.parametrize("prompt_id", ["caption", "two", "count"])
@pytest.mark.parametrize("text", ["Yes.", "a circle and a square."])
def test_other_prompts_keep_the_caption_score(prompt_id, text):
    j = judge_one(prompt_id, text, weight=2.0)
    item = score_item(text, TRUTH, ObjectVocabulary.from_categories(TOY_VOCAB))
    assert j["score"] == len(item["covered"]) - 2.0 * len(item["hallucinated"])
    assert "qa" not in j and j["hallucinated"] == item["hallucinated"]


def test_existence_question_detection():
    vocab = ObjectVocabulary.from_categories(TOY_VOCAB)
    assert existence_object("<image>\nIs there a star in the image?", vocab) == "star"
    assert existence_object("Are there any circles?", vocab) == "circle"
    assert existence_object("Do you see a red diamond?", vocab) == "diamond"
    for question in ("Describe the image.", "Is there a circle or a square?", "Is there a dog?",
                     "Are there 3 stars?", "Where is the star?"):
        assert existence_object(question, vocab) is None, question
    assert question_text(PROMPTS["chat"]) == "Is there a square in the image?"


def test_right_answers_pair_against_wrong_ones_with_coverage_kept():
    judge = GroundingJudge("toy", hallucination_weight=2.0)
    cands = [{"id": f"{pid}#{i}", "prompt_id": pid, "text": text}
             for pid in ("present", "absent") for i, text in enumerate(["Yes.", "No."])]
    prompts = {pid: {"id": pid, **PROMPTS[pid], "images": []} for pid in ("present", "absent")}
    rows, summary = build_pairs(PairsConfig(), prompts, cands, judge.judge(cands, prompts))
    assert {(r["prompt_id"], r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows} == {
        ("present", "Yes.", "No."), ("absent", "No.", "Yes.")}
    assert all(r["chosen_score"] - r["rejected_score"] == 3.0 for r in rows) and not summary["dropped"]


# --- prompt mixing -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world():
    return toy_world.ToyWorldConfig()


def test_zero_fraction_reproduces_the_caption_prompts(world, tmp_path):
    plain = [toy_world.scene_record(world, s, str((tmp_path / "images" / f"{s.id}.png").resolve()))
             for s in toy_world.make_scenes(world, "dpo", 30, start=60)]
    assert toy_world.write_prompts(world, "dpo", 30, tmp_path, start=60, qa_fraction=0.0) == plain
    assert toy_world.write_prompts(world, "dpo", 30, tmp_path, start=60) == plain
    # The rounds loop with qa_fraction 0 writes round 2's caption prompts as before the key existed.
    written = _round_prompts(RlaifConfig(model="toy", prompts_per_round=10, qa_fraction=0.0), 1, tmp_path / "r")
    world_dir = (tmp_path / "r" / "world" / "images").resolve()
    assert [json.loads(line) for line in written.read_text().splitlines()] == [
        toy_world.scene_record(world, s, str(world_dir / f"{s.id}.png"))
        for s in toy_world.make_scenes(world, "dpo", 10, start=10)]


@pytest.mark.parametrize("fraction", [0.25, 0.5, 1.0])
def test_fraction_of_prompts_ask_one_of_their_scenes_questions(world, tmp_path, fraction):
    plain = toy_world.write_prompts(world, "dpo", 40, tmp_path)
    mixed = toy_world.write_prompts(world, "dpo", 40, tmp_path, qa_fraction=fraction)
    asked = [m for m in mixed if "qa" in m]
    assert len(mixed) == 40 and len(asked) == round(40 * fraction)
    assert len({m["id"] for m in mixed}) == 40
    for p, m in zip(plain, mixed):
        if "qa" not in m:
            assert m == p
            continue
        # Same scene, image and ground truth; the question is one of the scene's own POPE questions.
        assert m["id"].startswith(p["id"] + "-qa") and m["images"] == p["images"] and m["objects"] == p["objects"]
        q = p["pope"][int(m["id"].rsplit("qa", 1)[1])]
        assert m["question"] == q["question"] and m["qa"]["answer"] == q["answer"]
        assert (q["object"] in m["objects"]) == (q["answer"] == "Yes")
    assert toy_world.write_prompts(world, "dpo", 40, tmp_path, qa_fraction=fraction) == mixed  # seeded


def test_each_round_window_draws_its_own_mix_and_eval_never_gets_one(world, tmp_path):
    # The same 20 scenes, mixed as round 1's window (start 0) and as round 2's (start 20): different picks.
    records = toy_world.write_prompts(world, "dpo", 20, tmp_path)
    picks = [[r["id"] for r in toy_world.mix_existence_questions(world, records, 0.5, "dpo", start) if "qa" in r]
             for start in (0, 20)]
    assert len(picks[0]) == len(picks[1]) == 10 and picks[0] != picks[1]
    with pytest.raises(ValueError, match="never into the eval split"):
        toy_world.write_prompts(world, "eval", 10, tmp_path, qa_fraction=0.25)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        toy_world.write_prompts(world, "dpo", 10, tmp_path, qa_fraction=1.5)


def test_rlaif_and_recipe_settings(tmp_path):
    records = [json.loads(line) for line in
               _round_prompts(RlaifConfig(model="toy", prompts_per_round=12, qa_fraction=0.25), 2,
                              tmp_path / "r").read_text().splitlines()]
    assert sum("qa" in r for r in records) == 3 and all(r["id"].startswith("toy-dpo-") for r in records)
    with pytest.raises(ValueError, match="prompts file"):
        RlaifConfig(model="toy", prompts="p.jsonl", qa_fraction=0.5)
    # The measured default mixes toy-world rounds only; a prompts file brings its own questions.
    assert RlaifConfig(model="toy").qa_fraction == TOY_QA_FRACTION == DemoConfig().qa_fraction
    assert RlaifConfig(model="toy", prompts="p.jsonl").qa_fraction == 0.0
    # Recipe: the training source takes qa_fraction; the eval source refuses it.
    src = recipe_config._check_source("source", {"type": "toy_world", "n": 8, "qa_fraction": 0.5})
    with pytest.raises(ValueError, match="eval.source.qa_fraction"):
        recipe_config._check_source("eval.source", {"type": "toy_world", "split": "eval", "qa_fraction": 0.5})
    with pytest.raises(ValueError, match="source.qa_fraction"):
        recipe_config._check_source("source", {"type": "toy_world", "qa_fraction": "half"})
    prompts = [json.loads(line) for line in write_source({"seed": 0}, src, tmp_path / "s").read_text().splitlines()]
    assert sum("qa" in p for p in prompts) == 4
    # qa_fraction 0 keeps the stage key that runs made before the key existed.
    zero = recipe_config._check_source("source", {"type": "toy_world", "n": 8})
    assert zero["qa_fraction"] == 0.0 and "qa_fraction" not in source_identity(zero)
    assert source_identity(src)["qa_fraction"] == 0.5


def test_mixing_is_random_over_scenes_not_a_prefix(world, tmp_path):
    mixed = toy_world.write_prompts(world, "dpo", 40, tmp_path, qa_fraction=0.25)
    positions = [i for i, m in enumerate(mixed) if "qa" in m]
    assert positions != list(range(10)) and max(positions) > 20
    answers = [m["qa"]["answer"] for m in toy_world.write_prompts(world, "dpo", 200, tmp_path, qa_fraction=0.5)
               if "qa" in m]
    assert 30 < answers.count("Yes") < 70  # yes and no about equally often


# --- completing yes/no candidates ----------------------------------------------------------------------

@pytest.mark.parametrize("answers, other", [
    (["Yes.", "Yes."], "No."), (["no"], "yes"), (["No!", "No!"], "Yes!"),
    (["Yes.", "No."], None),  # both sampled: nothing to add
    (["Yes, there is a star.", "Yes."], None),  # not bare answers: the opposite is not known
    (["a red circle."], None), ([], None),
])
def test_the_unsampled_answer_of_a_yes_no_prompt(answers, other):
    from halign.data_gen.sample import other_answer

    assert other_answer(answers) == other


def test_every_asked_question_forms_a_pair_once_the_other_answer_is_a_candidate(tmp_path):
    """A confident policy samples one answer K times out of K: without completion such a question forms no pair
    (the yes/no skill gets no signal); with it, each question pairs the right answer against the wrong one."""
    from halign.data_gen.pairs import run as run_pairs
    from halign.data_gen.sample import SampleConfig, run as run_sample
    from halign.data_gen.toy_checkpoint import get_toy_checkpoint
    from halign.rewards.judges.cli import run_judge

    world = toy_world.ToyWorldConfig()
    asked = [r for r in toy_world.write_prompts(world, "dpo", 24, tmp_path / "w", qa_fraction=0.5) if "qa" in r]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in asked))
    checkpoint = get_toy_checkpoint(progress=False, log=lambda *_: None)  # the shipped one: it answers yes/no
    pairs = {}
    for complete in (False, True):
        out = tmp_path / f"complete_{complete}"
        cfg = SampleConfig(model=str(checkpoint), k=3, temperature=0.05, complete_yes_no=complete)
        candidates = run_sample(cfg, prompts, out / "sample", progress=False)
        judgments, _, _ = run_judge("grounding", candidates, out / "judgments.jsonl", options={"vocabulary": "toy"},
                                    progress=False)
        try:
            run_pairs(PairsConfig(), judgments, candidates, out / "sample" / "prompts.jsonl", out / "pairs")
            pairs[complete] = json.loads((out / "pairs" / "summary.json").read_text())["pairs"]
        except ValueError as err:  # not a single pair
            assert "no preference pairs" in str(err)
            pairs[complete] = 0
        records = [json.loads(line) for line in candidates.read_text().splitlines()]
        completed = [c for c in records if c.get("origin") == "completed"]
        assert bool(completed) == complete and all(c["text"] in ("Yes.", "No.") for c in records)
    assert pairs[False] <= 2 and pairs[True] == len(asked) == 12
