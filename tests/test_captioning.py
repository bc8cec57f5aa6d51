"""mmlab.captioning: generate against Hugging Face's generate, the captioners' training/decoding consistency, bad input."""
import math

import pytest
import torch
from torch import nn

from mmlab.captioning import (CaptionDecoder, CaptionerCfg, CaptionTokenizer, CaptionTransformer, Generated, HFCaptioner,
                              ShowAndTell, caption_batch, caption_loss, generate, warp_logits)
from mmlab.data.schema import Batch

BOS, EOS, PAD = 0, 1, 2


def tiny_vision_encoder_decoder(vocab=40, eos_bias=2.5):
    "A random ViT + GPT-2 (cross-attention) captioner whose end token has a constant logit bias (varied lengths)."
    from transformers import GPT2Config, ViTConfig, VisionEncoderDecoderConfig, VisionEncoderDecoderModel
    torch.manual_seed(0)
    enc = ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8)
    dec = GPT2Config(vocab_size=vocab, n_positions=32, n_embd=32, n_layer=2, n_head=2, add_cross_attention=True,
                     is_decoder=True, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, tie_word_embeddings=False)
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    cfg.decoder_start_token_id, cfg.eos_token_id, cfg.pad_token_id, cfg.tie_word_embeddings = BOS, EOS, PAD, False
    model = VisionEncoderDecoderModel(cfg).eval()
    head = nn.Linear(32, vocab)
    with torch.no_grad():
        head.weight.normal_(0, 0.3); head.bias.zero_(); head.weight[EOS] = 0; head.bias[EOS] = eos_bias
    model.decoder.lm_head = head
    return model, torch.randn(3, 3, 16, 16)


@pytest.fixture(scope="module")
def ved():
    model, pixels = tiny_vision_encoder_decoder()
    cap = HFCaptioner(model)
    with torch.no_grad(): memory = cap.start(pixels)
    return model, pixels, cap, memory


def hf_generate(model, pixels, **kw):
    from transformers import GenerationConfig
    gc = GenerationConfig(decoder_start_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, return_dict_in_generate=True,
                          output_scores=True, **kw)
    with torch.no_grad(): return model.generate(pixel_values=pixels, generation_config=gc)


def ours(cap, memory, **kw):
    with torch.no_grad(): return generate(cap.step, memory, bos_id=BOS, eos_id=EOS, pad_id=PAD, **kw)


# every width x penalty with early_stopping=True, and the other two stopping rules at two maximum lengths
CASES = ([(w, a, True, 12) for w in (2, 3, 5) for a in (0.0, 1.0, 2.0, -0.5)]
         + [(w, a, s, L) for w in (2, 4) for a in (0.5, 1.5) for s in (False, "never") for L in (6, 12)])


@pytest.mark.parametrize("beams,alpha,stop,max_length", CASES)
def test_beam_search_equals_hf(ved, beams, alpha, stop, max_length):
    "Same sequences, same scores, and the search stops after as many decoder steps as HF's (the stopping rules)."
    model, pixels, cap, memory = ved
    calls = []
    hook = model.decoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        theirs = hf_generate(model, pixels, num_beams=beams, length_penalty=alpha, early_stopping=stop, max_length=max_length)
        hf_steps = len(calls)
        mine = ours(cap, memory, num_beams=beams, length_penalty=alpha, early_stopping=stop, max_length=max_length)
    finally: hook.remove()
    assert torch.equal(theirs.sequences, mine.sequences)
    assert torch.allclose(theirs.sequences_scores, mine.scores, atol=1e-5)
    assert len(calls) - hf_steps == hf_steps, (hf_steps, len(calls) - hf_steps)


def test_grid_has_varied_lengths(ved):
    "The parity cases are not trivial: captions end at different lengths, and some at the maximum length."
    _, _, cap, memory = ved
    lengths = set()
    for beams, alpha, stop, L in CASES:
        seqs = ours(cap, memory, num_beams=beams, length_penalty=alpha, early_stopping=stop, max_length=L).sequences
        ends = (seqs == EOS).int()
        lengths |= set(torch.where(ends.any(1), ends.argmax(1), torch.full((3,), -1)).tolist())
    assert -1 in lengths and len(lengths) >= 4, lengths


def test_greedy_and_sampling_equal_hf(ved):
    model, pixels, cap, memory = ved
    assert torch.equal(hf_generate(model, pixels, max_length=12).sequences, ours(cap, memory, max_length=12).sequences)
    for kw in (dict(temperature=0.7, top_k=5), dict(top_p=0.8, top_k=0), dict(temperature=1.3, top_k=10, top_p=0.9)):
        torch.manual_seed(5); theirs = hf_generate(model, pixels, do_sample=True, max_length=12, **kw)
        torch.manual_seed(5); mine = ours(cap, memory, do_sample=True, max_length=12, **kw)
        assert torch.equal(theirs.sequences, mine.sequences), kw


def test_warp_logits_equals_hf_processors():
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper
    # exact boundaries: equal logits have probabilities 1/4 exactly, so the cumulative sums hit 1 - top_p and k-th ties
    flat = torch.zeros(2, 4)
    for p, kept in [(0.5, 2), (0.75, 3), (0.25, 1)]:
        assert torch.equal(torch.isinf(warp_logits(flat, top_p=p)), torch.isinf(TopPLogitsWarper(p)(None, flat.clone()))), p
        assert int(torch.isfinite(warp_logits(flat, top_p=p)[0]).sum()) == kept, p
    # however small top_p, the most likely token stays (float sums of probabilities can end at or below 1 - top_p)
    x = torch.randn(64, 50, generator=torch.Generator().manual_seed(1))
    kept = torch.isfinite(warp_logits(x, top_p=1e-8))
    assert (kept.sum(-1) == 1).all() and kept.gather(1, x.argmax(-1, keepdim=True)).all()
    tied = torch.tensor([[3.0, 1.0, 1.0, 0.0]])                          # the 2nd and 3rd most likely tie: top-2 keeps both
    assert torch.isfinite(warp_logits(tied, top_k=2)).tolist() == [[True, True, True, False]]
    assert torch.equal(torch.isinf(warp_logits(tied, top_k=2)), torch.isinf(TopKLogitsWarper(2)(None, tied.clone())))
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        x = torch.randn(4, 30, generator=g) * 3
        t, k, p = 0.5 + torch.rand(1, generator=g).item(), int(torch.randint(1, 30, (1,), generator=g)), torch.rand(1, generator=g).item()
        ref = TopPLogitsWarper(p)(None, TopKLogitsWarper(k)(None, TemperatureLogitsWarper(t)(None, x.clone())))
        assert torch.equal(torch.isinf(ref), torch.isinf(warp_logits(x, t, k, p)))
        assert torch.allclose(ref[torch.isfinite(ref)], warp_logits(x, t, k, p)[torch.isfinite(ref)])


def test_sampling_generator_is_reproducible_and_filters_apply(ved):
    _, _, cap, memory = ved
    a = ours(cap, memory, do_sample=True, top_k=1, max_length=10, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.sequences, ours(cap, memory, max_length=10).sequences)      # top-1 sampling is greedy
    b = ours(cap, memory, do_sample=True, max_length=10, generator=torch.Generator().manual_seed(2))
    c = ours(cap, memory, do_sample=True, max_length=10, generator=torch.Generator().manual_seed(2))
    assert torch.equal(b.sequences, c.sequences)


def toy_step(tokens, state):
    "Log-probabilities from the last token only: greedy takes 'a' (0.6) then 0.25; the best is 'the cat' (0.4 x 0.9)."
    p = torch.full((len(tokens), 8), 1e-9)
    last = tokens[:, -1]
    p[last == 0, 2], p[last == 0, 3] = 0.6, 0.4
    p[last == 2, 4:8] = 0.25
    p[last == 3, 4], p[last == 3, 5] = 0.9, 0.1
    p[last >= 4, 1] = 1.0
    return p.log(), state


def test_beam_finds_what_greedy_misses_and_scores_are_defined():
    state = {"rows": torch.zeros(2, 1), "note": "kept"}                 # dict states with non-tensor leaves work
    g = generate(toy_step, state, bos_id=0, eos_id=1, max_length=6, length_penalty=0.0)
    b = generate(toy_step, state, bos_id=0, eos_id=1, max_length=6, num_beams=2, length_penalty=0.0)
    assert isinstance(g, Generated) and g.sequences[0].tolist() == [0, 2, 4, 1] and b.sequences[0].tolist() == [0, 3, 4, 1]
    assert torch.allclose(g.scores.exp(), torch.tensor([0.15, 0.15])) and torch.allclose(b.scores.exp(), torch.tensor([0.36, 0.36]))
    # the length penalty divides by the number of generated tokens (3 here)
    b1 = generate(toy_step, state, bos_id=0, eos_id=1, max_length=6, num_beams=2, length_penalty=1.0)
    assert torch.allclose(b1.scores, torch.tensor(math.log(0.36) / 3).expand(2))
    g1 = generate(toy_step, state, bos_id=0, eos_id=1, max_length=6)
    assert torch.allclose(g1.scores, torch.tensor(math.log(0.15) / 3).expand(2))
    # max_length cuts: with room for one token only, the first token finishes the caption
    short = generate(toy_step, state, bos_id=0, eos_id=1, max_length=2, num_beams=2, length_penalty=0.0)
    assert short.sequences[0].tolist() == [0, 2] and torch.allclose(short.scores.exp(), torch.tensor([0.6, 0.6]))
    # padding after the end
    pad = generate(toy_step, torch.zeros(1, 1), bos_id=0, eos_id=1, pad_id=7, max_length=8)
    assert pad.sequences.tolist() == [[0, 2, 4, 1]]


def test_generate_refuses_bad_arguments():
    s = torch.zeros(2, 1)
    for kw, msg in [(dict(num_beams=0), "num_beams"), (dict(num_beams=2.0), "num_beams"), (dict(max_length=1), "max_length"),
                    (dict(temperature=0.0), "temperature"), (dict(top_k=-1), "top_k"), (dict(top_p=1.5), "top_p"),
                    (dict(early_stopping="soon"), "early_stopping"), (dict(do_sample=True, num_beams=3), "beam sampling")]:
        with pytest.raises(ValueError, match=msg): generate(toy_step, s, bos_id=0, eos_id=1, **kw)
    with pytest.raises(ValueError, match="at least one tensor"): generate(toy_step, ("no", "tensors"), bos_id=0, eos_id=1)


def test_hf_captioner_refuses_other_models():
    with pytest.raises(TypeError, match="BlipForConditionalGeneration or VisionEncoderDecoderModel"): HFCaptioner(nn.Linear(2, 2))


def test_blip_stand_in_through_generate(tmp_path, monkeypatch):
    "The pretrained path: the tiny BLIP stand-in, our generate and BLIP's own generate agree (beam and greedy)."
    monkeypatch.setenv("MMLAB_CACHE_DIR", str(tmp_path))
    from transformers import BlipForConditionalGeneration
    from mmlab.core import load_pretrained
    blip = load_pretrained(BlipForConditionalGeneration, "Salesforce/blip-image-captioning-base", verbose=False).eval()
    cap = HFCaptioner(blip)
    px = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for kw in (dict(num_beams=3, length_penalty=1.0, early_stopping=True), dict(num_beams=1)):
            theirs = blip.generate(pixel_values=px, max_length=12, **kw)
            mine = generate(cap.step, cap.start(px), bos_id=cap.bos_id, eos_id=cap.eos_id, pad_id=cap.pad_id, max_length=12, **kw)
            assert torch.equal(theirs, mine.sequences), kw


# ---------------------------------------------------------------- the captioners

@pytest.fixture(scope="module")
def rows():
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    imgs = [Image.fromarray((torch.rand(32, 32, 3, generator=g) * 255).byte().numpy()) for _ in range(3)]
    tok = CaptionTokenizer()
    return tok, caption_batch(imgs, [["a red circle above a blue square", "the cross"], ["a pink diamond"], ["a cyan square is here"]], tok)


@pytest.mark.parametrize("cls", [ShowAndTell, CaptionTransformer])
def test_step_equals_teacher_forcing(rows, cls):
    "Decoding one token at a time gives the logits training computed at every position (no off-by-one)."
    tok, b = rows
    torch.manual_seed(0)
    m = cls(CaptionerCfg(vocab_size=len(tok), dim=32)).eval()
    with torch.no_grad():
        out = m(b)
        ids = b.inputs["text"]
        lengths = (ids != tok.pad_id).sum(1)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), (lengths - 1).cumsum(0)])
        for r in range(len(ids)):
            state = m.start(b.inputs["vision"][r:r + 1])
            for t in range(1, int(lengths[r])):
                logits, state = m.step(ids[r:r + 1, :t], state)
                assert torch.allclose(logits[0], out.logits[offsets[r] + t - 1], atol=1e-5), (cls.__name__, r, t)
        assert torch.equal(out.labels, ids[:, 1:][ids[:, 1:] != tok.pad_id])
        assert abs(out.loss.item() - torch.nn.functional.cross_entropy(out.logits, out.labels).item()) < 1e-6


@pytest.mark.parametrize("cls", [ShowAndTell, CaptionTransformer])
def test_captioner_learns_a_caption(rows, cls):
    "A few hundred steps on one batch drive the loss down and greedy decoding then writes the training caption."
    tok, b = rows
    torch.manual_seed(0)
    m = cls(CaptionerCfg(vocab_size=len(tok), dim=32, dropout=0.0))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    one = b[[2]]                                                          # "a pink diamond" for image 1
    for _ in range(150):
        loss = m(one).loss; opt.zero_grad(); loss.backward(); opt.step()
    m.eval()
    with torch.no_grad():
        g = generate(m.step, m.start(one.inputs["vision"]), bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id, max_length=10)
    assert tok.decode(g.sequences[0]) == "a pink diamond"


def test_captioners_refuse_bad_batches(rows):
    tok, b = rows
    m = CaptionTransformer(CaptionerCfg(vocab_size=len(tok), dim=32))
    bad = Batch(inputs={"vision": torch.zeros(2, 1, 32, 32), "text": b.inputs["text"][:2]},
                mask={"vision": torch.ones(2, dtype=torch.bool), "text": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"expected \(B, 3, 32, 32\), got \(2, 1, 32, 32\)"): m(bad)
    with pytest.raises(ValueError, match="needs inputs 'vision' and 'text'"): m(Batch(inputs={"vision": b.inputs["vision"]}, mask={"vision": b.mask["vision"]}))
    with pytest.raises(ValueError, match="exceed max_length"): m.decoder(torch.zeros(1, 30, dtype=torch.long), m.start(b.inputs["vision"][:1]))
    with pytest.raises(TypeError, match="list of captions"): tok("one caption")


# ---------------------------------------------------------------- the decoder with any encoder's token states

def padded_memories(lengths=(7, 4, 1), width=24, fill=1e3, seed=0):
    "Memories of different lengths padded into one (B, P, Dm) tensor whose padding holds large values, and its mask."
    g = torch.Generator().manual_seed(seed)
    memory = torch.randn(len(lengths), max(lengths), width, generator=g)
    mask = torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]
    return memory, memory.masked_fill(~mask[..., None], fill), mask


def test_decoder_ignores_masked_memory_and_reads_the_rest(rows):
    "Absent memory positions change nothing (not even with huge values); present ones do change the logits."
    tok, b = rows
    torch.manual_seed(0)
    dec = CaptionDecoder(CaptionerCfg(vocab_size=len(tok), dim=32, layers=2), memory_dim=24).eval()
    memory, padded, mask = padded_memories()
    ids = b.inputs["text"][:3, :6]
    with torch.no_grad():
        out = dec(ids, padded, mask)
        for r, n in enumerate(mask.sum(1).tolist()):
            assert torch.allclose(out[r], dec(ids[r:r + 1], memory[r:r + 1, :n])[0], atol=1e-5), r
        other = padded.clone(); other[0, 0] += 1.0
        assert not torch.allclose(dec(ids, other, mask)[0], out[0], atol=1e-4)        # a present position matters
        assert torch.allclose(dec(ids, other, mask)[1:], out[1:], atol=1e-6)            # rows stay independent
        # causal: a later token does not change the logits of earlier positions
        changed = ids.clone(); changed[:, -1] = tok.unk_id
        assert torch.allclose(dec(changed, padded, mask)[:, :-1], out[:, :-1], atol=1e-6)


@pytest.mark.parametrize("beams", [1, 3])
def test_generate_with_a_masked_memory_state(rows, beams):
    "generate reorders (memory, memory_mask) pairs: a padded batch decodes as each memory alone."
    tok, _ = rows
    torch.manual_seed(1)
    dec = CaptionDecoder(CaptionerCfg(vocab_size=len(tok), dim=32), memory_dim=24).eval()
    memory, padded, mask = padded_memories(seed=1)
    kw = dict(bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id, max_length=9, num_beams=beams)
    with torch.no_grad():
        together = generate(dec.step, (padded, mask), **kw)
        for r, n in enumerate(mask.sum(1).tolist()):
            alone = generate(dec.step, memory[r:r + 1, :n], **kw)
            L = alone.sequences.shape[1]
            assert torch.equal(alone.sequences[0], together.sequences[r, :L]) and (together.sequences[r, L:] == tok.pad_id).all()
            assert torch.allclose(alone.scores[0], together.scores[r], atol=1e-5)


def test_captioner_is_the_decoder_on_patch_features(rows):
    "CaptionTransformer's step is its CaptionDecoder's on the image's patch features (D_m = D)."
    tok, b = rows
    torch.manual_seed(0)
    m = CaptionTransformer(CaptionerCfg(vocab_size=len(tok), dim=32)).eval()
    assert isinstance(m.decoder, CaptionDecoder) and m.decoder.memory_dim == 32
    with torch.no_grad():
        memory = m.start(b.inputs["vision"])
        assert memory.shape == (4, 16, 32)
        ids = b.inputs["text"][:, :4]
        assert torch.equal(m.step(ids, memory)[0], m.decoder(ids, memory)[:, -1])
        assert torch.equal(m.decoder.step(ids, (memory, torch.ones(4, 16, dtype=torch.bool)))[0], m.decoder(ids, memory)[:, -1])


def test_decoder_and_loss_refuse_bad_input(rows):
    tok, b = rows
    dec = CaptionDecoder(CaptionerCfg(vocab_size=len(tok), dim=32, max_length=8), memory_dim=24)
    ids, memory = b.inputs["text"][:2, :5], torch.zeros(2, 6, 24)
    for args, msg in [((ids, torch.zeros(2, 6, 32)), r"memory: expected \(2, P, 24\) token states, got \(2, 6, 32\)"),
                      ((ids, torch.zeros(3, 6, 24)), r"memory: expected \(2, P, 24\)"),
                      ((ids, torch.zeros(2, 24)), r"memory: expected \(2, P, 24\) token states, got \(2, 24\)"),
                      ((ids.float(), memory), "ids: expected \\(B, t\\) integer token ids"),
                      ((ids[0], memory), "ids: expected"),
                      ((torch.zeros(2, 9, dtype=torch.long), memory), "9 tokens exceed max_length 8"),
                      ((ids, memory, torch.ones(2, 6)), r"memory_mask: expected bool \(2, 6\).*got torch.float32 \(2, 6\)"),
                      ((ids, memory, torch.ones(2, 5, dtype=torch.bool)), r"memory_mask: expected bool \(2, 6\)")]:
        with pytest.raises(ValueError, match=msg): dec(*args)
    assert dec(torch.zeros(2, 8, dtype=torch.long), memory).shape == (2, 8, len(tok))     # max_length tokens fit exactly
    with pytest.raises(ValueError, match=r"logits \(B, L, V\) and targets \(B, L\) must agree: got \(2, 5, 7\) and \(2, 4\)"):
        caption_loss(torch.zeros(2, 5, 7), torch.zeros(2, 4, dtype=torch.long), 0)
    out = caption_loss(torch.zeros(1, 3, 5), torch.tensor([[2, 0, 4]]), pad_id=0)
    assert out.labels.tolist() == [2, 4] and out.logits.shape == (2, 5) and abs(out.loss.item() - math.log(5)) < 1e-6

def test_tokenizer_round_trip():
    tok = CaptionTokenizer()
    ids = tok(["a red circle above a blue square", "the cross"])
    assert ids.shape == (2, 9) and (ids[:, 0] == tok.bos_id).all() and ids[1, 3] == tok.eos_id and (ids[1, 4:] == tok.pad_id).all()
    assert tok.decode(ids[0]) == "a red circle above a blue square" and tok.decode(ids[1].tolist()) == "the cross"
    assert tok.decode([tok.bos_id, tok.words.index("red"), tok.eos_id, tok.words.index("blue")]) == "red"
    assert tok.encode("A zebra!") == [tok.bos_id, tok.words.index("a"), tok.unk_id, tok.eos_id]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("cls", [ShowAndTell, CaptionTransformer])
def test_bf16_autocast_matches_fp32_on_cuda(rows, cls):
    "bf16 autocast forward and backward agree with fp32: loss within 2 %, gradients with cosine similarity > 0.99."
    tok, b = rows
    torch.manual_seed(0)
    m = cls(CaptionerCfg(vocab_size=len(tok), dim=64, dropout=0.0)).cuda()
    b = b.to("cuda")
    def run(amp):
        m.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp): loss = m(b).loss
        loss.backward()
        return loss.float().item(), torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])
    l32, g32 = run(False)
    l16, g16 = run(True)
    assert abs(l16 - l32) / l32 < 0.02
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.99
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        g = generate(m.step, m.start(b.inputs["vision"]), bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id,
                     max_length=8, num_beams=3)
    assert g.sequences.device.type == "cuda" and g.sequences.shape[0] == len(b)


def test_sampling_keeps_every_token_by_default_and_lstm_dropout_needs_two_layers():
    "top_k = 0 (the default) samples from the whole distribution: 'a' (0.6) and 'the' (0.4) both come out first."
    from mmlab.captioning import CaptionerCfg, ShowAndTell, generate
    firsts = {int(generate(toy_step, torch.zeros(1, 1), 0, 1, max_length=4, do_sample=True,
                           generator=torch.Generator().manual_seed(s)).sequences[0, 1]) for s in range(40)}
    assert firsts == {2, 3}
    assert ShowAndTell(CaptionerCfg(vocab_size=10, dim=8, layers=2, dropout=0.3)).lstm.dropout == 0.3
    assert ShowAndTell(CaptionerCfg(vocab_size=10, dim=8, layers=1, dropout=0.3)).lstm.dropout == 0.0
