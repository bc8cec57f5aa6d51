"Video chapter, captioning: the tokenizer's words, the captioning chapter's decoder on video models' token states."
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from mmlab.captioning import CaptionerCfg, CaptionTokenizer, generate
from mmlab.data.schema import Batch, SchemaError
from mmlab.video import (ACTIONS, C3D, R2Plus1D, SingleFrame, VideoCaptionTokenizer, VideoCaptioner, VideoCfg, VIDEO_SHAPES,
                         VideoTransformer, VideoTransformerCfg, caption_clips, clip_caption_batch, clip_captions,
                         moving_shape_track)
from mmlab.data.synth import COLORS


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


CFG = VideoCfg(frames=8, size=16, width=8, feature_dim=16, hidden=16)
TOK = VideoCaptionTokenizer()


def test_every_word_the_clips_use_is_known():
    rng = np.random.default_rng(0)
    for action, colour, shape in itertools.product(ACTIONS, COLORS, VIDEO_SHAPES):
        detail = moving_shape_track(action, 8, rng).detail
        for cap in clip_captions(colour, shape, action, detail, "blue cross", 3, rng) + clip_captions(colour, shape, action, detail):
            ids = TOK.encode(cap)
            assert TOK.unk_id not in ids and TOK.decode(ids) == cap, cap


def test_the_captioning_tokenizer_is_extended_not_changed():
    base = CaptionTokenizer()
    assert TOK.words[:len(base)] == base.words and (TOK.bos_id, TOK.eos_id, TOK.pad_id) == (base.bos_id, base.eos_id, base.pad_id)
    assert len(set(TOK.words)) == len(TOK.words)
    assert TOK.encode("a red square") == base.encode("a red square")
    more = VideoCaptionTokenizer(["zigzags"])
    assert more.decode(more.encode("a red square zigzags")) == "a red square zigzags" and TOK.encode("zigzags")[1] == TOK.unk_id


def _captioner(*encoders, dim=16):
    torch.manual_seed(0)
    return VideoCaptioner(CaptionerCfg(vocab_size=len(TOK), dim=dim, layers=1, heads=2, dropout=0.0), *encoders).eval()


ENCODERS = [(lambda: SingleFrame(CFG), 4), (lambda: C3D(CFG), 2 * 2 * 2), (lambda: R2Plus1D(CFG), 8),
            (lambda: VideoTransformer(VideoTransformerCfg(frames=8, size=16, patch=4, dim=32, mlp_dim=64)), 4 * 16)]


@pytest.mark.parametrize("build, n_tokens", ENCODERS)
def test_step_by_step_equals_teacher_forcing(build, n_tokens):
    m = _captioner(build())
    x = torch.randn(2, 8, 3, 16, 16)
    rows = clip_caption_batch(x, [["a red square moves up"], ["a blue cross spins clockwise next to a red circle"]], TOK)
    assert m.start(x).shape == (2, n_tokens, 16)
    with torch.no_grad():
        out = m(rows)
        n = int((rows.inputs["text"][:, 1:] != TOK.pad_id).sum())
        assert out.logits.shape == (n, len(TOK)) and out.labels.shape == (n,) and out.loss.ndim == 0
        state = m.start(x[1:])
        for t in range(1, 6): logits, state = m.step(rows.inputs["text"][1:, :t], state)
    first_row = int((rows.inputs["text"][0, 1:] != TOK.pad_id).sum())
    assert torch.allclose(logits[0], out.logits[first_row + 4], atol=1e-5)


def test_two_streams_attend_to_both_token_sets():
    m = _captioner(R2Plus1D(CFG), SingleFrame(CFG))
    x = torch.randn(3, 8, 3, 16, 16)
    assert m.start(x).shape == (3, 8 + 4, 16) and len(m.proj) == 2
    with torch.no_grad():
        assert torch.allclose(m.start(x)[:, 8:], m.proj[1](m.video[1].tokens(x)))


def test_a_frame_captioner_sees_only_the_middle_frame():
    m = _captioner(SingleFrame(CFG))
    x = torch.randn(2, 8, 3, 16, 16)
    y = torch.randn(2, 8, 3, 16, 16); y[:, 4] = x[:, 4]
    with torch.no_grad(): assert torch.equal(m.start(x), m.start(y))
    z = x.clone(); z[:, 3] += 1
    with torch.no_grad(): assert not torch.equal(_captioner(C3D(CFG)).start(x), _captioner(C3D(CFG)).start(z))


def test_caption_clips_is_greedy_and_beam_decoding():
    m = _captioner(C3D(CFG))
    x = torch.randn(3, 8, 3, 16, 16)
    with torch.no_grad():                                     # greedy by hand: the most likely next word until <eos>
        mem, ids = m.start(x), torch.full((3, 1), TOK.bos_id)
        for _ in range(7): ids = torch.cat([ids, m.decoder(ids, mem)[:, -1].argmax(-1, keepdim=True)], 1)
    assert caption_clips(m, x, TOK, max_length=8, batch_size=2) == [TOK.decode(s) for s in ids]
    with torch.no_grad():
        beam = generate(m.step, m.start(x), TOK.bos_id, TOK.eos_id, TOK.pad_id, max_length=8, num_beams=3)
    assert caption_clips(m, x, TOK, num_beams=3, max_length=8) == [TOK.decode(s) for s in beam.sequences]


def test_a_captioner_learns_to_tell_clips_apart():
    "Two clips with opposite motion and their captions: a few steps of training and each gets its own caption back."
    from mmlab.train import fit
    torch.manual_seed(0)        # the weights must not depend on which tests ran before (20 epochs: learnt from 6 of 6 seeds)
    x = torch.zeros(2, 8, 3, 16, 16)
    for t in range(8): x[0, t, :, :, 4 + t] = 1; x[1, t, :, :, 11 - t] = 1
    caps = [["a red square moves to the right"], ["a red square moves to the left"]]
    m = _captioner(C3D(CFG), dim=32).train()
    res = fit(m, clip_caption_batch(x.repeat(16, 1, 1, 1, 1), caps * 16, TOK), epochs=20, batch_size=8, lr=3e-3,
              progress=False, device="cpu", monitor="train_loss")
    assert caption_clips(res.model, x, TOK) == [c[0] for c in caps]


def test_bad_input_is_refused_with_a_clear_error():
    with pytest.raises(TypeError, match="tokens"): VideoCaptioner(CaptionerCfg(vocab_size=len(TOK)), nn.Linear(2, 2))
    with pytest.raises(TypeError, match="at least one"): VideoCaptioner(CaptionerCfg(vocab_size=len(TOK)))
    m = _captioner(C3D(CFG))
    x = torch.randn(2, 8, 3, 16, 16)
    with pytest.raises(SchemaError, match="'video' and 'text'"): m(Batch(inputs={"video": x}, mask={"video": torch.ones(2, dtype=torch.bool)}))
    with pytest.raises(SchemaError, match=r"expected shape \(B, 8, 3, 16, 16\)"): m.start(torch.randn(2, 8, 3, 32, 32))
    with pytest.raises(ValueError, match="a list per clip"): clip_caption_batch(x, [["a"]], TOK)
    with pytest.raises(ValueError, match="no caption"): clip_caption_batch(x, [[], []], TOK)


def test_caption_rows_mark_their_padding():
    x = torch.zeros(2, 8, 3, 16, 16)
    b = clip_caption_batch(x, [["a red square moves to the right"], ["a red square turns", "a red square"]], TOK)
    ids = b.inputs["text"]
    assert torch.equal(b.pad_mask["text"], ids != TOK.pad_id) and torch.equal(b.lengths["text"], (ids != TOK.pad_id).sum(1))
    assert not b.pad_mask["text"].all()                                   # the shorter captions are padded
