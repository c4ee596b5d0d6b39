import pytest

from halign.data_gen import toy_world
from halign.data_gen.toy_world import COLORS, ToyWorldConfig, draw_scene, make_scene, make_scenes, png_bytes


def test_same_seed_same_bytes_and_different_seed_differs():
    cfg = ToyWorldConfig(seed=3)
    a = [png_bytes(draw_scene(cfg, s)) for s in make_scenes(cfg, "eval", 20)]
    b = [png_bytes(draw_scene(cfg, s)) for s in make_scenes(cfg, "eval", 20)]
    assert a == b
    # Scene i does not depend on what else was generated.
    assert png_bytes(draw_scene(cfg, make_scene(cfg, "eval", 7))) == a[7]
    other = [png_bytes(draw_scene(ToyWorldConfig(seed=4), s)) for s in make_scenes(ToyWorldConfig(seed=4), "eval", 20)]
    assert other != a


def test_held_out_scenes_never_repeat_a_training_drawing():
    cfg = ToyWorldConfig()
    seen = {toy_world.signature(s) for s in make_scenes(cfg, "sft", 2000)}
    plain = [toy_world.signature(s) for s in make_scenes(cfg, "eval", 300)]
    assert any(sig in seen for sig in plain)  # small scenes do repeat by chance...
    held_out = make_scenes(cfg, "eval", 300, exclude=seen)
    assert len(held_out) == 300
    assert not any(toy_world.signature(s) in seen for s in held_out)  # ...which exclusion removes
    # Equal signatures really are equal pixels.
    a, b = make_scene(cfg, "eval", 1), make_scene(cfg, "eval", 1)
    assert toy_world.signature(a) == toy_world.signature(b)


def test_pixel_colour_at_object_centre_matches_ground_truth():
    cfg = ToyWorldConfig()
    checked = 0
    for scene in make_scenes(cfg, "eval", 60):
        image = draw_scene(cfg, scene)
        for o in scene.objects:
            # The centre of every shape is filled (a star's and cross's centre included).
            assert image.getpixel((o.cx, o.cy)) == COLORS[o.color], (scene.id, o)
            checked += 1
        # Every grid cell without an object is pure background.
        occupied = {(o.row, o.col) for o in scene.objects}
        cell = cfg.image_size // cfg.grid
        for r in range(cfg.grid):
            for c in range(cfg.grid):
                if (r, c) not in occupied:
                    assert image.getpixel((c * cell + cell // 2, r * cell + cell // 2)) == toy_world.BACKGROUND
    assert checked > 100


def test_detailed_caption_is_exact():
    cfg = ToyWorldConfig()
    for scene in make_scenes(cfg, "eval", 50):
        caption = scene.detailed_caption
        for o in scene.objects:
            assert f"a {o.color} {o.shape} {o.position}" in caption
        for shape in set(cfg.shapes) - {o.shape for o in scene.objects}:
            assert shape not in caption


@pytest.mark.parametrize("bias_rate", [0.0, 0.7, 1.0])
def test_sft_captions_carry_the_configured_bias_rate(bias_rate):
    cfg = ToyWorldConfig(bias_rate=bias_rate)
    eligible = added = 0
    for scene in make_scenes(cfg, "sft", 3000):
        present = {o.shape for o in scene.objects}
        triggers = [p for s in present for p in cfg.partners[s] if p not in present]
        eligible += len(set(triggers))
        added += len(scene.hallucinated_in_noisy)
        for shape in scene.hallucinated_in_noisy:
            assert shape not in present and shape in scene.noisy_caption
        for o in scene.objects:  # true objects are always mentioned
            assert f"a {o.color} {o.shape}" in scene.noisy_caption
    assert eligible > 500
    assert abs(added / eligible - bias_rate) < 0.04


def test_pope_questions_answers_and_kinds():
    cfg = ToyWorldConfig()
    for scene in make_scenes(cfg, "eval", 100):
        present = {o.shape for o in scene.objects}
        kinds = {q["kind"] for q in scene.questions}
        if len(present) < len(cfg.shapes):
            assert kinds == {"random", "popular", "adversarial"}
        for q in scene.questions:
            assert q["answer"] == ("Yes" if q["object"] in present else "No")
            assert q["question"] == f"Is there a {q['object']} in the image?"
        for q in scene.questions:
            if q["kind"] == "adversarial" and q["answer"] == "No":
                partners = {p for s in present for p in cfg.partners[s]} - present
                if partners:
                    assert q["object"] in partners


def test_hf_dataset_has_images_column():
    ds = toy_world.to_hf_dataset(ToyWorldConfig(), "eval", 5)
    assert "images" in ds.column_names and len(ds) == 5
    first = ds[0]["images"][0]
    assert first.size == (48, 48)
    assert ds[0]["caption"].startswith("There ")


def test_bad_config_names_the_problem():
    with pytest.raises(ValueError, match="unknown shapes"):
        ToyWorldConfig(shapes=("circle", "blob"))
    with pytest.raises(ValueError, match="co-occurrence"):
        ToyWorldConfig(cooccurrence=(("circle", "hexagon"),))
