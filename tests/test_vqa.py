"""mmlab.vqa: the official VQA accuracy (checked against outputs recorded from the official script), answer and
question vocabularies, region features and the VQA models."""
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st
from test_bad_input import works_or_refuses

from mmlab import vqa
from mmlab.vqa import (ANSWER_SCORES, AnswerVocab, AttentionVQA, FusionVQA, ImageOnlyVQA, QuestionOnlyVQA, QuestionVocab,
                       RegionEncoder, VQAConfig, ViltForVQA, encode_regions, normalize_answer, predict_answers,
                       region_targets, soft_scores, vilt_vqa_parity, vqa_accuracy, vqa_batch, vqa_loss, vqa_score)

CASES = json.loads((Path(__file__).parent / "data" / "vqa_official_cases.json").read_text())

# --- the metric against the official script's recorded outputs ---

def test_normalisation_equals_the_official_script_on_every_recorded_case():
    bad = [(s, normalize_answer(s), want) for s, want in CASES["normalize"] if normalize_answer(s) != want]
    assert not bad and len(CASES["normalize"]) == 522, bad[:5]

def test_accuracy_and_breakdown_equal_the_official_script_on_every_recorded_question():
    acc = CASES["accuracy"]
    bad = [c for c in acc if round(100 * vqa_accuracy(c["prediction"], c["answers"]), 2) != c["accuracy"]]
    assert not bad and len(acc) == 700, bad[:3]
    s = vqa_score({c["question_id"]: c["prediction"] for c in acc}, acc)
    assert {k: s[k] for k in ("overall", "per_answer_type", "per_question_type")} == CASES["score"]
    assert s["per_question"] == {c["question_id"]: c["accuracy"] for c in acc}

def test_answers_without_ids_are_left_out_together_as_in_the_script():
    rows = [{**c, "answer_type": "other", "question_type": "q"} for c in CASES["id_less"]]
    s = vqa_score({c["question_id"]: c["prediction"] for c in rows}, rows)
    assert s["per_question"] == {c["question_id"]: c["accuracy"] for c in rows}
    same = [{"question_id": 1, "answer_type": "other", "question_type": "q", "answers": [{"answer": "red"}] * 10}]
    assert vqa_score({1: "red"}, same)["overall"] == 0.0                            # every equal record left out
    with_ids = [{**same[0], "answers": [{"answer": "red", "answer_id": i} for i in range(10)]}]
    assert vqa_score({1: "red"}, with_ids)["overall"] == 100.0

# --- the metric's rules, one by one ---

@pytest.mark.parametrize("m, want", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (9, 1.0), (10, 1.0)])
def test_matching_humans_give_the_leave_one_out_accuracy(m, want):
    got = vqa_accuracy("blue", ["blue"] * m + ["red"] * (10 - m))
    assert math.isclose(got, want, abs_tol=1e-12) and round(100 * got, 2) == round(100 * want, 2)

def test_leave_one_out_with_other_numbers_of_humans():
    assert vqa_accuracy("a", ["a"]) == 0.0                                          # alone: nobody left to agree
    assert math.isclose(vqa_accuracy("a", ["a", "a", "b"]), (2 * (1 / 3) + 2 / 3) / 3)
    assert math.isclose(vqa_accuracy("a", ["a"] * 4 + ["b"] * 2), (4 * 1.0 + 2 * 1.0) / 6)

@pytest.mark.parametrize("pred, humans, want", [
    ("Yes", ["yes"] * 10, 0.0), ("yes.", ["yes"] * 10, 0.0), ("yes", ["yes"] * 10, 1.0),       # unanimous: raw strings
    ("Yes", ["yes"] * 9 + ["Yes"], 1.0), ("yes", ["Yes"] * 9 + ["yes."], 1.0),                  # they differ: normalised
    ("2", ["two"] * 3 + ["2"] * 4 + ["three"] * 3, 1.0), ("three", ["two"] * 3 + ["2"] * 4 + ["three"] * 3, 0.9),
    ("red", ["red"] * 2 + ["dark red"] * 8, 0.6), ("the dog.", ["a dog"] * 5 + ["dog"] * 5, 1.0),
    ("yes", ["yes "] * 9 + ["yes"], 1.0), ("Yes", ["yes\n"] * 9 + ["yes"], 0.0),               # stripped before comparing
    ("0", ["none"] * 3 + ["zero"], 1.0), ("dont", ["don't"] * 3 + ["no"] * 7, 0.9)])
def test_quirks_of_the_official_script(pred, humans, want):
    assert math.isclose(vqa_accuracy(pred, humans), want, abs_tol=1e-12)

@pytest.mark.parametrize("text, want", [
    ("Yes.", "yes"), ("  Two\tDogs\n", "2 dogs"), ("none", "0"), ("ten", "10"), ("eleven", "eleven"), ("an apple", "apple"),
    ("the", ""), ("hot-dog", "hot dog"), ("red / blue", "red blue"), ("red/blue", "red blue"), ("1,000", "1000"),
    ("red,2,3", "red23"), ("3.14", "3.14"), ("mr. smith", "mr smith"), ("a.b", "ab"), ("." * 40, "." * 8),
    ("dont", "don't"), ("couldnt've", "couldn't've"), ("couldn'tve", "couldn't've"), ("im", "im"), ("ive", "ive"),
    ("somebody'd", "somebodyd"), ("twas", "'twas"), ("it's", "it's"), ("a: b", "a: b"), ("c++", "c"),
    ("50%", "50%"), ("x=y", "x y"), ("(red)", "red"), ("red?", "red"), ("yes!", "yes"), ("a_b", "b"), ("[1]", "1"),
    ("{a}", ""), ("`x`", "x"), ('"quoted"', "quoted"), ("<3", "3"), ("@home", "home"), ("a\\b", "b"), ("x;y", "x y"),
    ("what's", "what's"), ("whats", "what's"), ("Id've", "id've"), ("yall'll", "y'all'll")])
def test_normalisation_cases(text, want):
    assert normalize_answer(text) == want

def test_every_punctuation_mark_is_deleted_or_spaced():
    for p in ';/[]"{}()=+\\_-><@`,?!':
        assert normalize_answer(f"ab{p}cd") == "ab cd", p                           # inside a word: a space
        assert normalize_answer(f"ab {p}cd") == "ab cd", p                          # next to a space: deleted
        assert normalize_answer(f"ab{p}cd 1,2") == "abcd 12", p                     # digit,digit anywhere: deleted
    for kept in "':$%&*#":
        assert normalize_answer(f"ab{kept}cd") == f"ab{kept}cd"

def test_contraction_table_matches_the_scripts_size_and_shape():
    t = vqa.CONTRACTIONS
    assert len(t) == 118 and all("'" in v or v == "somebodyd" for v in t.values())
    assert all(k.count("'") == v.count("'") - 1 for k, v in t.items() if v != "somebodyd")

@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["red", "Red", "red.", "a red", "blue", "2", "two", "yes", "Yes", "no"]), min_size=1, max_size=10),
       st.sampled_from(["red", "Red.", "blue", "2", "two", "yes", "Yes", "nope"]), st.randoms())
def test_accuracy_is_a_capped_leave_one_out_mean_invariant_to_order(humans, pred, rnd):
    acc = vqa_accuracy(pred, humans)
    assert 0.0 <= acc <= 1.0 and acc in {round(k / (3 * len(humans)), 12) for k in range(3 * len(humans) + 1)} | {acc}
    shuffled = humans[:]; rnd.shuffle(shuffled)
    assert math.isclose(vqa_accuracy(pred, shuffled), acc)
    norm = humans if len(set(h.strip() for h in humans)) == 1 else [normalize_answer(h) for h in humans]
    p = pred if len(set(h.strip() for h in humans)) == 1 else normalize_answer(pred)
    m = sum(h == p for h in norm)
    assert math.isclose(acc, sum(min(1, (m - (h == p)) / 3) for h in norm) / len(norm))

def test_bad_input_is_refused_with_the_argument_named():
    with pytest.raises(TypeError, match="prediction must be a str"): vqa_accuracy(2, ["2"])
    with pytest.raises(ValueError, match="non-empty list of str"): vqa_accuracy("2", [])
    with pytest.raises(ValueError, match="non-empty list of str"): vqa_accuracy("2", "2")
    with pytest.raises(ValueError, match="non-empty list of str"): vqa_accuracy("2", ["2", None])
    with pytest.raises(TypeError, match="expected a str answer"): normalize_answer(b"yes")

@settings(max_examples=60, deadline=None)
@given(pred=st.one_of(st.text(max_size=12), st.none(), st.integers()),
       humans=st.one_of(st.lists(st.one_of(st.text(max_size=8), st.none()), max_size=12), st.text(max_size=5), st.integers(), st.none()))
def test_the_metric_works_or_refuses_with_its_own_error(pred, humans):
    works_or_refuses(lambda: vqa_accuracy(pred, humans))
    works_or_refuses(lambda: normalize_answer(pred))
    works_or_refuses(lambda: AnswerVocab.build(humans if not isinstance(humans, list) else [humans], 3))
    ann = [{"question_id": 1, "answers": humans, "answer_type": "other", "question_type": "q"}]
    works_or_refuses(lambda: vqa_score({1: pred}, ann))

# --- vqa_score ---

def _ann(qid, answers, at="other", qt="what"):
    return {"question_id": qid, "answers": answers, "answer_type": at, "question_type": qt}

def test_vqa_score_breakdown_and_rounding_like_the_script():
    rows = [_ann(1, ["red"] * 10, "other", "what color"), _ann(2, ["2"] * 3 + ["red"] * 7, "number", "how many"),
            _ann(3, ["yes"] * 10, "yes/no", "is there")]
    s = vqa_score({1: "red", 2: "2", 3: "Yes"}, {"annotations": rows})
    assert s["per_question"] == {1: 100.0, 2: 90.0, 3: 0.0} and s["overall"] == 63.33
    assert s["per_answer_type"] == {"other": 100.0, "number": 90.0, "yes/no": 0.0}
    assert s["per_question_type"] == {"what color": 100.0, "how many": 90.0, "is there": 0.0}
    one_in_800 = [_ann(i, ["a"] * 10) for i in range(800)]
    got = vqa_score({i: "a" if i == 0 else "b" for i in range(800)}, one_in_800)["overall"]
    assert got == 0.13 and round(100 * 1.0 / 800, 2) == 0.12                       # Python 2's round: halves go up
    assert vqa_score({1: "red"}, [_ann(1, ["red"] * 2 + ["x"] * 8)], digits=3)["overall"] == 60.0

def test_vqa_score_reads_tables_and_refuses_mismatched_ids():
    from mmlab.data.synth import make_scene_vqa
    ds = make_scene_vqa(4, seed=0, cache=False)
    s = vqa_score(dict(zip(ds["question_id"], ds["answer"])), ds)
    assert s["overall"] > 70 and set(s["per_question_type"]) == set(ds["question_type"])
    with pytest.raises(ValueError, match="cover exactly"): vqa_score({1: "a"}, [_ann(2, ["a"])])
    with pytest.raises(ValueError, match="cover exactly"): vqa_score({1: "a", 2: "b"}, [_ann(1, ["a"])])
    with pytest.raises(KeyError, match="answer_type"): vqa_score({1: "a"}, [{"question_id": 1, "answers": ["a"], "question_type": "q"}])
    with pytest.raises(KeyError, match="'annotations'"): vqa_score({1: "a"}, {"questions": []})
    with pytest.raises(KeyError, match="lacks column"): vqa_score({}, ds.remove_columns("answer_type"))
    with pytest.raises(TypeError, match="dict"): vqa_score([("1", "a")], [_ann(1, ["a"])])
    with pytest.raises(ValueError, match="no annotated question"): vqa_score({}, [])

# --- vocabularies and batches ---

def test_answer_vocab_and_soft_scores():
    v = AnswerVocab.build([["Red", "red", "two"], ["2", "red."], ["blue"]], size=2)
    assert v.answers == ["red", "2"] and len(v) == 2
    assert AnswerVocab.build([["y", "x"]], size=5).answers == ["x", "y"]            # ties: alphabetical
    s = soft_scores([["red"] * 8 + ["orange"] * 2, ["2", "2", "Two"] + ["x"] * 7, ["Red"] * 10], v)
    torch.testing.assert_close(s, torch.tensor([[1.0, 0.0], [0.0, 0.9], [1.0, 0.0]]))   # humans normalised first
    with pytest.raises(ValueError, match="distinct"): AnswerVocab(["a", "a"])
    with pytest.raises(ValueError, match="size"): AnswerVocab.build([["a"]], size=0)

def test_question_vocab_encodes_with_padding_and_unknown_words():
    w = QuestionVocab.build(["what color is the circle?", "how many?"])
    ids, pad = w.encode(["what color is it?", "how many circle"], max_len=6)
    assert ids.shape == (2, 6) and pad.sum(1).tolist() == [5, 3]
    assert ids[0, 3] == 1 and (ids[0] > 1).sum() == 4 and ids[0, 5] == 0            # 'it' unseen -> 1; padding 0
    assert w.encode(["what color is the circle?"])[0].shape == (1, 6)

@pytest.fixture(scope="module")
def scenes():
    from mmlab.data.synth import make_scene_vqa
    ds = make_scene_vqa(40, seed=3, cache=False)
    answers, words = AnswerVocab.build(ds["answers"], 24), QuestionVocab.build(ds["question"])
    return ds, answers, words, vqa_batch(ds, answers, words)

def test_vqa_batch(scenes):
    ds, answers, words, b = scenes
    assert b.inputs["vision"].shape == (120, 3, 48, 48) and b.labels[ANSWER_SCORES].shape == (120, 24)
    assert b.sample_id == [str(q) for q in ds["question_id"]] and (b.labels["label"] == b.labels[ANSWER_SCORES].argmax(1)).all()
    import numpy as np
    assert torch.allclose(b.inputs["vision"][5].permute(1, 2, 0), torch.tensor(np.asarray(ds[5]["image"]), dtype=torch.float32) / 255)
    rows = [ds[i] for i in range(3)]
    b2 = vqa_batch(rows, answers, words)
    assert torch.equal(b2.inputs["text"], b.inputs["text"][:3, :b2.inputs["text"].shape[1]]) and torch.equal(b2.labels[ANSWER_SCORES], b.labels[ANSWER_SCORES][:3])
    with pytest.raises(KeyError, match="question_id"): vqa_batch([], answers, words)
    with pytest.raises(TypeError, match="answers must be an AnswerVocab"): vqa_batch(rows, ["red"], words)
    with pytest.raises(TypeError, match="words must be a QuestionVocab or a Hugging Face tokenizer"): vqa_batch(rows, answers, {"red": 2})
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_len must be a positive integer"): vqa_batch(rows, answers, words, max_len=bad)

def test_answer_lists_are_checked_per_question():
    v = AnswerVocab(["red", "2"])
    with pytest.raises(TypeError, match=r"human_answers\[1\] must be a list of str"): soft_scores([["red"], "red"], v)
    with pytest.raises(TypeError, match=r"human_answers\[0\] must be a list of str"): AnswerVocab.build([["red", 2]], 2)
    with pytest.raises(TypeError, match="human_answers must be a list"): soft_scores("red", v)
    with pytest.raises(TypeError, match="vocab must be an AnswerVocab"): soft_scores([["red"]], ["red"])
    with pytest.raises(ValueError, match="size must be an integer"): AnswerVocab.build([["a"]], size=2.5)

# --- region features ---

def test_region_encoder_cuts_the_grid_row_by_row():
    enc = RegionEncoder(grid=3).eval()
    x = torch.rand(2, 3, 48, 48)
    full = enc(x)
    assert full.shape == (2, 9, 12) and torch.allclose(full[..., :7].sum(-1), torch.ones(2, 9))
    for r in range(3):
        for c in range(3):
            cell = x[:, :, 16 * r:16 * r + 16, 16 * c:16 * c + 16].repeat(1, 1, 3, 3)   # that cell everywhere
            torch.testing.assert_close(enc(cell)[:, 0], full[:, 3 * r + c])
    with pytest.raises(ValueError, match="divisible by grid"): enc(torch.rand(1, 3, 47, 48))
    with pytest.raises(ValueError, match="divisible by grid"): enc(torch.rand(1, 1, 48, 48))

def test_region_targets_put_each_object_in_its_cell(scenes):
    ds = scenes[0]
    colors, shapes = ["red", "green", "blue", "yellow", "purple", "orange"], ["circle", "square", "triangle", "cross"]
    pix, col, shp = region_targets(ds, colors, shapes)
    assert pix.shape == (40, 3, 48, 48) and col.shape == shp.shape == (40, 9)
    r = ds[0]
    for c, s, (row, k) in zip(r["colors"], r["shapes"], r["cells"]):
        assert col[0, 3 * row + k] == colors.index(c) + 1 and shp[0, 3 * row + k] == shapes.index(s) + 1
    assert (col[0] > 0).sum() == len(r["colors"]) and ((col > 0) == (shp > 0)).all()

def test_encode_regions_encodes_each_image_once_and_matches_the_encoder(scenes, monkeypatch):
    b = scenes[3]
    enc = RegionEncoder().eval()
    seen = []
    orig = enc.forward
    monkeypatch.setattr(enc, "forward", lambda x: seen.append(len(x)) or orig(x))
    out = encode_regions(b, enc)
    assert sum(seen) == 40 and out.inputs["vision"].shape == (120, 9, 12)          # 40 scenes, 120 questions
    torch.testing.assert_close(out.inputs["vision"][:7], orig(b.inputs["vision"][:7]))
    assert torch.equal(out.inputs["text"], b.inputs["text"])
    with pytest.raises(ValueError, match="pixels"): encode_regions(out, enc)

# --- the models ---

@pytest.fixture(scope="module")
def regional(scenes):
    ds, answers, words, b = scenes
    torch.manual_seed(0)
    return encode_regions(b, RegionEncoder().eval()), VQAConfig(vocab_size=len(words), num_answers=len(answers))

def test_vqa_loss_is_bce_summed_over_answers_as_vilt_trains():
    logits, s = torch.randn(4, 5), torch.rand(4, 5)
    want = torch.nn.BCEWithLogitsLoss()(logits, s) * 5
    torch.testing.assert_close(vqa_loss(logits, s), want)
    manual = -(s * torch.nn.functional.logsigmoid(logits) + (1 - s) * torch.nn.functional.logsigmoid(-logits)).sum(1).mean()
    torch.testing.assert_close(vqa_loss(logits, s), manual)

@pytest.mark.parametrize("Model", [QuestionOnlyVQA, ImageOnlyVQA, AttentionVQA, FusionVQA])
def test_models_output_logits_loss_and_labels(Model, regional):
    b, cfg = regional
    torch.manual_seed(0)
    out = Model(cfg)(b[:10])
    assert out.logits.shape == (10, cfg.num_answers) and torch.equal(out.labels, b.labels["label"][:10])
    torch.testing.assert_close(out.loss, vqa_loss(out.logits, b.labels[ANSWER_SCORES][:10]))
    out.loss.backward()
    unlabelled = replace(b[:3], labels={})
    assert Model(cfg)(unlabelled).loss is None

def test_each_baseline_ignores_exactly_what_it_should(regional):
    b, cfg = regional
    b = b[:12]
    scrambled_image = replace(b, inputs={**b.inputs, "vision": b.inputs["vision"].flip(0)})
    scrambled_text = replace(b, inputs={**b.inputs, "text": b.inputs["text"].flip(0)}, pad_mask={"text": b.pad_mask["text"].flip(0)})
    torch.manual_seed(0)
    for Model, ignores, reads in ((QuestionOnlyVQA, scrambled_image, scrambled_text), (ImageOnlyVQA, scrambled_text, scrambled_image)):
        m = Model(cfg).eval()
        assert torch.equal(m(b).logits, m(ignores).logits)
        assert not torch.allclose(m(b).logits, m(reads).logits)
    for Model in (AttentionVQA, FusionVQA):
        m = Model(cfg).eval()
        assert not torch.allclose(m(b).logits, m(scrambled_image).logits) and not torch.allclose(m(b).logits, m(scrambled_text).logits)

def test_question_encoder_reads_up_to_the_last_word_only(regional):
    b, cfg = regional
    enc = vqa.QuestionEncoder(cfg.vocab_size, cfg.word_dim, cfg.dim).eval()
    ids, pad = b.inputs["text"][:4], b.pad_mask["text"][:4]
    longer = torch.cat([ids, torch.full((4, 3), 2)], 1)                              # junk after the padding
    longer[:, :ids.shape[1]][~pad] = 0
    q = enc(ids, pad)
    torch.testing.assert_close(enc(longer, torch.cat([pad, torch.zeros(4, 3, dtype=torch.bool)], 1)), q)
    n = int(pad[0].sum())
    torch.testing.assert_close(enc(ids[:1, :n], pad[:1, :n]), q[:1])

def test_attention_is_over_regions_with_positions(regional):
    b, cfg = regional
    torch.manual_seed(0)
    m = AttentionVQA(cfg).eval()
    w = m(b[:6]).attention
    assert w.shape == (6, cfg.glimpses, 9) and torch.allclose(w.sum(-1), torch.ones(6, cfg.glimpses)) and (w >= 0).all()
    same = replace(b[:1], inputs={**b[:1].inputs, "vision": torch.zeros(1, 9, 12)})
    with torch.no_grad(): m.regions.position.zero_()
    torch.testing.assert_close(m(same).attention, torch.full((1, cfg.glimpses, 9), 1 / 9))   # identical regions: uniform

def test_fusion_vqa_uses_the_configured_strategy_of_mmlab_fusion(regional):
    from mmlab.fusion import LowRankTensorFusion, TensorFusion
    b, cfg = regional
    assert isinstance(FusionVQA(cfg).fusion, LowRankTensorFusion) and FusionVQA(cfg).fusion.config.rank == 8
    m = FusionVQA(replace(cfg, fusion="tensor", fusion_options={"factor_dim": 4}))
    assert isinstance(m.fusion, TensorFusion) and m(b[:3]).logits.shape == (3, cfg.num_answers)
    with pytest.raises(KeyError, match="unknown fusion strategy"): FusionVQA(replace(cfg, fusion="nope"))

def test_models_refuse_pixels_and_non_batches(regional, scenes):
    b, cfg = regional
    with pytest.raises(ValueError, match="region features"): AttentionVQA(cfg)(scenes[3][:2])
    with pytest.raises(TypeError, match="Batch"): AttentionVQA(cfg)({"vision": b.inputs["vision"]})

def test_models_refuse_a_modality_marked_absent_unless_they_never_read_it(regional):
    b, cfg = regional
    b = b[:4]
    torch.manual_seed(0)
    for Model, needs in ((AttentionVQA, ("vision", "text")), (FusionVQA, ("vision", "text")), (QuestionOnlyVQA, ("text",)),
                         (ImageOnlyVQA, ("vision",))):
        m = Model(cfg).eval()
        for modality in ("vision", "text"):
            if modality in needs:
                with pytest.raises(ValueError, match=f"{Model.__name__}: every question needs its '{modality}' input"): m(b.hide([modality]))
            else:
                assert torch.equal(m(b.hide([modality])).logits, m(b).logits)            # the baseline never reads it

def test_predict_answers_maps_question_ids_to_answers(regional, scenes):
    b, cfg = regional
    answers = scenes[1]
    torch.manual_seed(0)
    m = AttentionVQA(cfg)
    pred = predict_answers(m, b, answers, batch_size=7)
    assert list(pred) == [int(s) for s in b.sample_id] and set(pred.values()) <= set(answers.answers)
    with torch.no_grad(): top = m.eval()(b).logits.argmax(1)
    assert [pred[int(s)] for s in b.sample_id] == [answers.answers[i] for i in top]
    with pytest.raises(ValueError, match="gives 24 logits per question but vocab has 2 answers"): predict_answers(m, b, AnswerVocab(["a", "b"]))

# --- ViLT with a VQA head ---

def _hf_vqa(cfg, num_labels, seed=0):
    import transformers
    from mmlab.vilt import perturbed
    cfg = transformers.ViltConfig(**{**cfg.to_dict(), "num_labels": num_labels})
    torch.manual_seed(seed)
    return perturbed(transformers.ViltForQuestionAnswering(cfg), seed=seed)

@pytest.mark.parametrize("name", ["tiny", "wide", "deep"])
def test_vilt_vqa_equals_hugging_faces_vilt_for_question_answering(name):
    from mmlab.vilt import random_vilt_inputs, vilt_parity_configs
    cfg = vilt_parity_configs()[name]
    hf = _hf_vqa(cfg, num_labels=7, seed=len(name))
    ids, px, att, pm = random_vilt_inputs(hf.config, batch=5, length=min(9, cfg.max_position_embeddings), seed=2)
    scores = torch.rand(5, 7) * (torch.rand(5, 7) < .4)                          # soft targets, mostly 0
    gaps = vilt_vqa_parity(hf, ids, px, att, pm, scores)
    assert gaps["logits"] < 1e-5 and gaps["loss"] < 1e-5, gaps
    ours = ViltForVQA.from_hf(hf).eval()
    with torch.no_grad(): ref = hf(input_ids=ids, pixel_values=px, attention_mask=att, pixel_mask=pm, labels=scores)
    assert ours.num_answers == 7 and ref.loss > 0.1                               # a loss that a wrong head would miss
    wrong = ViltForVQA.from_hf(hf).eval()
    with torch.no_grad(): wrong.classifier[1].weight.mul_(1.1)
    assert (wrong.logits(ids, px, att, pm) - ref.logits).abs().max() > 1e-3        # the comparison can fail

@pytest.fixture(scope="module")
def vilt_setup(scenes):
    from mmlab.core import load_tokenizer
    from mmlab.vilt import ViltConfig
    ds, answers = scenes[0], scenes[1]
    tok = load_tokenizer("dandelin/vilt-b32-finetuned-vqa", verbose=False)
    cfg = ViltConfig(vocab_size=len(tok), max_text_len=32, dim=32, heads=4, mlp_dim=48, layers=2, image_size=48, patch_size=16)
    return vqa_batch(ds.select(range(12)), answers, tok), cfg, tok, answers

def test_vilt_vqa_trains_on_a_batch_of_word_pieces_and_pixels(vilt_setup):
    b, cfg, tok, answers = vilt_setup
    assert b.inputs["vision"].shape == (12, 3, 48, 48) and (b.inputs["text"][:, 0] == tok.cls_token_id).all()
    assert b.pad_mask["text"].dtype == torch.bool and b.pad_mask["text"].sum(1).min() >= 3       # [CLS] words [SEP]
    torch.manual_seed(0)
    m = ViltForVQA(cfg, len(answers))
    out = m(b)
    assert out.logits.shape == (12, len(answers)) and torch.equal(out.labels, b.labels["label"])
    torch.testing.assert_close(out.loss, vqa_loss(out.logits, b.labels[ANSWER_SCORES]))
    out.loss.backward()
    assert all(p.grad is not None for p in m.classifier.parameters())
    assert m(replace(b, labels={})).loss is None

def test_vilt_vqa_ignores_padding_and_reads_both_modalities(vilt_setup, scenes):
    b, cfg, tok, answers = vilt_setup
    torch.manual_seed(0)
    m = ViltForVQA(cfg, len(answers)).eval()
    longer = vqa_batch(scenes[0].select(range(12)), answers, tok, max_len=24)    # the same questions padded further
    assert longer.inputs["text"].shape[1] == 24 > b.inputs["text"].shape[1]
    with torch.no_grad():
        ref = m(b).logits
        torch.testing.assert_close(m(longer).logits, ref, atol=1e-5, rtol=1e-5)
        other_image = replace(b, inputs={**b.inputs, "vision": b.inputs["vision"].flip(0)})
        other_text = replace(b, inputs={**b.inputs, "text": b.inputs["text"].flip(0)}, pad_mask={"text": b.pad_mask["text"].flip(0)})
        assert not torch.allclose(m(other_image).logits, ref) and not torch.allclose(m(other_text).logits, ref)

def test_vilt_vqa_refuses_bad_input(vilt_setup, regional):
    b, cfg, tok, answers = vilt_setup
    import transformers
    from mmlab.vilt import vilt_parity_configs
    for bad in (0, -3, 2.5, "24"):
        with pytest.raises(ValueError, match="num_answers must be a positive integer"): ViltForVQA(cfg, bad)
    m = ViltForVQA(cfg, len(answers))
    with pytest.raises(TypeError, match="takes a Batch"): m({"vision": b.inputs["vision"]})
    with pytest.raises(ValueError, match=r"expected pixels \(B, C, H, W\)"): m(regional[0][:2])     # region features
    no_image = replace(b, inputs={"text": b.inputs["text"]}, mask={"text": b.mask["text"]})
    with pytest.raises(ValueError, match="expected pixels"): m(no_image)
    with pytest.raises(ValueError, match=r"'vision' input, but 12 of 12 are marked absent"): m(b.hide(["vision"]))
    with pytest.raises(ValueError, match=r"'text' input, but 12 of 12"): m(b.hide(["text"]))
    with pytest.raises(TypeError, match="needs a ViltForQuestionAnswering"): ViltForVQA.from_hf(transformers.ViltModel(vilt_parity_configs()["tiny"]))

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_autocast_forward_and_backward_agree_with_fp32_on_cuda(regional):
    b, cfg = regional
    b = b[:32].to("cuda")
    for Model in (AttentionVQA, FusionVQA):
        torch.manual_seed(0)
        m = Model(cfg).cuda().eval()
        ref = m(b)
        ref.loss.backward()
        g32 = [p.grad.clone() for p in m.parameters() if p.grad is not None]
        m.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = m(b)
        out.loss.backward()
        g16 = [p.grad for p in m.parameters() if p.grad is not None]
        torch.testing.assert_close(out.logits.float(), ref.logits, atol=5e-2, rtol=5e-2)
        torch.testing.assert_close(out.loss.float(), ref.loss, atol=5e-2, rtol=2e-2)
        cos = torch.nn.functional.cosine_similarity(torch.cat([g.flatten() for g in g16]).float(), torch.cat([g.flatten() for g in g32]), dim=0)
        assert cos > 0.99, cos

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_vilt_vqa_bf16_autocast_agrees_with_fp32_on_cuda(vilt_setup):
    b, cfg, tok, answers = vilt_setup
    b = b.to("cuda")
    torch.manual_seed(0)
    m = ViltForVQA(cfg, len(answers)).cuda().eval()
    ref = m(b)
    ref.loss.backward()
    g32 = torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])
    m.zero_grad()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = m(b)
    out.loss.backward()
    g16 = torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]).float()
    torch.testing.assert_close(out.logits.float(), ref.logits, atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(out.loss.float(), ref.loss, atol=5e-2, rtol=2e-2)
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.99


def test_two_distinct_answers_are_normalised_before_matching():
    "The script normalises answers (punctuation, articles, digits) as soon as the annotators disagree, two answers included."
    from mmlab.vqa import _leave_one_out
    answers = [{"answer": "two dogs!", "answer_id": i} for i in range(2)] + [{"answer": "cats", "answer_id": 2 + i} for i in range(8)]
    assert _leave_one_out("2 dogs", answers) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)
    assert _leave_one_out("two dogs", [{"answer": "two dogs", "answer_id": i} for i in range(10)]) == 1.0


def test_naming_regions_is_the_sum_of_colour_and_shape_cross_entropies():
    from mmlab.vqa import _NameRegions, RegionEncoder
    torch.manual_seed(0)
    enc = RegionEncoder().eval()
    x, col, shp = torch.rand(2, 3, 48, 48), torch.randint(0, 7, (2, 9)), torch.randint(0, 5, (2, 9))
    out = _NameRegions(enc)(x, col, shp)
    lc, ls = enc.logits(x)
    want = torch.nn.functional.cross_entropy(lc.reshape(18, -1), col.flatten()) + torch.nn.functional.cross_entropy(ls.reshape(18, -1), shp.flatten())
    torch.testing.assert_close(out.loss, want)
    assert out.logits.shape == (18, 7) and torch.equal(out.labels, col.flatten())
