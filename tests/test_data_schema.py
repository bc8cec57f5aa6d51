"The multimodal sample and collate: presence masks, padding, and the errors for bad input."
import numpy as np
import pytest
from hypothesis import given, settings as hsettings, strategies as st
from PIL import Image

from mmlab.data.schema import (Collate, ModalityData, MultimodalSample, SchemaError, collate,
                               sample_from_row, course_vocab)

def _s(sid, **mods): return MultimodalSample(sid, {m: ModalityData(v) for m, v in mods.items()}, {"label": 0})

@hsettings(max_examples=25, deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(1, 9)), min_size=1, max_size=6))
def test_audio_lengths_and_masks(lengths):
    samples = [_s(str(i), text="a") if n is None else _s(str(i), audio=np.arange(1, n + 1, dtype=np.float32), text="a")
               for i, n in enumerate(lengths)]
    b = collate(samples, modalities=["audio", "text"])
    x, present = b.inputs["audio"], b.mask["audio"]
    assert present.tolist() == [n is not None for n in lengths]
    assert b.lengths["audio"].tolist() == [n or 0 for n in lengths]
    assert b.pad_mask["audio"].sum(1).tolist() == [n or 0 for n in lengths]
    assert x.shape == (len(lengths), max([n or 0 for n in lengths] + [1]))
    assert (x[~b.pad_mask["audio"]] == 0).all()               # padding and missing are zeros
    for i, n in enumerate(lengths):
        if n: assert x[i, :n].tolist() == list(range(1, n + 1))

def test_vision_video_sensor_shapes_and_presence():
    a = _s("a", vision=Image.new("RGB", (6, 4), (255, 255, 255)), video=np.zeros((3, 4, 6, 3), np.uint8), sensor=np.ones((7, 6)))
    b = _s("b", video=np.full((5, 4, 6, 3), 255, np.uint8))
    batch = collate([a, b])
    assert batch.inputs["vision"].shape == (2, 3, 4, 6) and batch.mask["vision"].tolist() == [True, False]
    assert batch.inputs["video"].shape == (2, 5, 3, 4, 6) and batch.lengths["video"].tolist() == [3, 5]
    assert batch.inputs["video"][1].min() == 1.0 and batch.inputs["sensor"].shape == (2, 7, 6)
    assert batch.mask["sensor"].tolist() == [True, False] and batch.inputs["sensor"][1].abs().sum() == 0

def test_text_with_a_hf_tokenizer():
    from mmlab.core import load_tokenizer
    tok = load_tokenizer("bert-base-uncased", verbose=False)
    b = collate([_s("a", text="a red circle"), _s("b", text="blue")], tokenizer=tok)
    ids = tok("a red circle")["input_ids"]
    assert b.inputs["text"][0, :len(ids)].tolist() == ids and b.lengths["text"].tolist() == [len(ids), len(tok("blue")["input_ids"])]

def test_rows_from_a_generated_dataset():
    from mmlab.data.synth import make_sentiment
    ds = make_sentiment(24, seed=0, p_missing=.4, cache=False)
    b = Collate(("vision", "audio", "text"), shapes={"vision": (3, 32, 32)})([ds[i] for i in range(24)])
    assert b.mask["audio"].tolist() == ds["has_audio"] and b.mask["text"].tolist() == ds["has_text"]
    assert b.labels["label"].tolist() == ds["label"] and b.inputs["vision"].shape == (24, 3, 32, 32)
    assert (b.lengths["text"] > 0).tolist() == ds["has_text"]

@pytest.mark.parametrize("bad, words", [
    (lambda: collate([_s("a", vision=np.zeros((4, 4, 3))), _s("b", vision=np.zeros((5, 4, 3)))]), ["vision", "(3, 5, 4)", "(3, 4, 4)"]),
    (lambda: collate([_s("a", sensor=np.zeros((4, 3))), _s("b", sensor=np.zeros((4, 2)))]), ["sensor", "(4, 2)", "(T, 3)"]),
    (lambda: collate([_s("a", audio=np.array([1., np.nan]))]), ["audio", "NaN/inf", "'a'"]),
    (lambda: collate([_s("a", vision=np.full((2, 2), np.inf))]), ["vision", "NaN/inf"]),
    (lambda: collate([_s("a", audio=np.zeros(0))]), ["audio", "empty"]),
    (lambda: collate([_s("a", audio=np.zeros((2, 2, 2)))]), ["audio", "1-D", "(2, 2, 2)"]),
    (lambda: collate([_s("a", audio=["x", "y"])]), ["audio", "numbers"]),
    (lambda: collate([_s("a", text=np.zeros(3))]), ["text", "float"]),
    (lambda: collate([_s("a", text="x")], modalities=["vision"]), ["vision", "shapes="]),
    (lambda: collate([_s("a", text="x")], modalities=["lidar"]), ["lidar", "sensor"]),
    (lambda: collate([]), ["empty"]),
    (lambda: MultimodalSample("a", {"smell": ModalityData(1)}), ["smell"]),
    (lambda: sample_from_row({"text": "x"}), ["label", "text"]),
    (lambda: collate([MultimodalSample("a", {"text": ModalityData("x")}, {"label": None})]), ["label", "None"]),
])
def test_errors_name_what_was_wrong(bad, words):
    with pytest.raises(SchemaError) as e: bad()
    assert all(w in str(e.value) for w in words), (str(e.value), words)

def test_missing_modality_is_not_an_error():
    b = collate([_s("a", text="red"), _s("b", text="blue")], modalities=["audio", "text"])
    assert b.mask["audio"].tolist() == [False, False] and b.inputs["audio"].shape == (2, 1)
    assert course_vocab()["[PAD]"] == 0 and b.inputs["text"].tolist() == [[course_vocab()["red"]], [course_vocab()["blue"]]]
