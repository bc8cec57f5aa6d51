"""mmlab.metrics against pycocoevalcap (BLEU, ROUGE-L, CIDEr-D, the PTB tokenizer, METEOR 1.5), sacrebleu and NLTK."""
import contextlib
import io
import math
import os
import random
import shutil
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmlab import metrics
from mmlab.metrics import (Meteor, MetricScore, bleu, caption_scores, cider_d, meteor, meteor_unavailable, ptb_tokenize,
                           rouge_l)

REFS = {1: ["a cat sits on a mat", "a cat is on the mat"], 2: ["a dog runs in the park", "the dog is running on grass"],
        3: ["two people ride bikes", "people riding bicycles on a road"]}
HYPS = {1: "a cat on a mat", 2: "a dog in the park", 3: "a man rides a bike"}
COCO = {"BLEU-1": 0.6860384556, "BLEU-2": 0.5664776108, "BLEU-3": 0.4055707943, "BLEU-4": 5.679027e-05,
        "METEOR": 0.3272350396, "ROUGE-L": 0.6559139785, "CIDEr-D": 2.0849621948}
COCO_PER_IMAGE = {"METEOR": [0.38998, 0.38998, 0.21739], "CIDEr-D": [3.561396, 2.693491, 0.0]}

WORDS = ("a an the man woman dog cat red blue green bike road park sits on in of with is are two people riding "
         "rides table near next to small large white black brown standing sitting holding looking").split()


def random_corpus(rng, n_images, vocab=25, words=None, empty_hyps=False):
    "Captions over a small vocabulary, so that n-grams repeat, clip, tie and share document frequencies."
    words = words or [f"w{i}" for i in range(vocab)]
    def cap(lo=1): return " ".join(rng.choice(words[:rng.randint(3, len(words))]) for _ in range(rng.randint(lo, 14)))
    refs = {f"img{i}": [cap() for _ in range(rng.randint(1, 6))] for i in range(n_images)}
    return refs, {k: cap(0 if empty_hyps else 1) for k in refs}


def coco(refs, hyps):
    "pycocoevalcap's scorers on already tokenised text -> {metric: (corpus, [per image])}."
    Bleu = pytest.importorskip("pycocoevalcap.bleu.bleu").Bleu
    Cider = pytest.importorskip("pycocoevalcap.cider.cider").Cider
    Rouge = pytest.importorskip("pycocoevalcap.rouge.rouge").Rouge
    gts, res = refs, {k: [v] for k, v in hyps.items()}
    with contextlib.redirect_stdout(io.StringIO()): b, bs = Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"BLEU-{k + 1}": (b[k], list(bs[k])) for k in range(4)}
    for name, scorer in (("ROUGE-L", Rouge()), ("CIDEr-D", Cider())):
        v, per = scorer.compute_score(gts, res); out[name] = (float(v), [float(x) for x in per])
    return out


def ours(refs, hyps, tokenize=False):
    out = {f"BLEU-{k}": bleu(refs, hyps, n=k, tokenize=tokenize) for k in range(1, 5)}
    out["ROUGE-L"] = rouge_l(refs, hyps, tokenize=tokenize)
    out["CIDEr-D"] = cider_d(refs, hyps, tokenize=tokenize)
    return out


def assert_parity(refs, hyps, tokenize=False, tol=1e-6):
    theirs = coco({k: [ptb_tokenize(r) for r in v] for k, v in refs.items()} if tokenize else refs,
                  {k: ptb_tokenize(v) for k, v in hyps.items()} if tokenize else hyps)
    mine = ours(refs, hyps, tokenize)
    gap = 0.0
    for name, (value, per) in theirs.items():
        assert list(mine[name].per_image) == list(refs)
        gap = max([gap, abs(value - mine[name].value)] + [abs(a - b) for a, b in zip(per, mine[name].per_image.values())])
        assert gap < tol, (name, value, mine[name].value)
    return gap


# ---------------------------------------------------------------- parity with pycocoevalcap

def test_reference_vector_values():
    s = caption_scores(REFS, HYPS, meteor=False)
    assert list(s) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D"]
    for k, v in s.items(): assert abs(v - COCO[k]) < 1e-9, k
    per = cider_d(REFS, HYPS).per_image
    assert all(abs(per[k] - v) < 1e-6 for k, v in zip(REFS, COCO_PER_IMAGE["CIDEr-D"]))


def test_parity_reference_vector():
    assert assert_parity(REFS, HYPS) < 1e-12


def test_parity_random_corpora():
    rng = random.Random(1)
    gap = 0.0
    for i in range(150):
        refs, hyps = random_corpus(rng, rng.randint(1, 40), vocab=rng.choice([4, 10, 40]), empty_hyps=i % 3 == 0)
        gap = max(gap, assert_parity(refs, hyps))
    assert gap < 1e-9


def test_parity_with_tokenisation():
    "Raw captions: ours with tokenize=True equals pycocoevalcap given ptb_tokenize's output."
    rng = random.Random(2)
    punct = ["", "", ".", ",", "!", "'s", "n't"]
    for _ in range(20):
        refs, hyps = random_corpus(rng, rng.randint(1, 20), words=[w.capitalize() + rng.choice(punct) for w in WORDS])
        assert_parity(refs, hyps, tokenize=True)


def test_parity_larger_corpus_with_real_words():
    rng = random.Random(3)
    refs, hyps = random_corpus(rng, 300, words=WORDS)
    assert_parity(refs, hyps)


# ---------------------------------------------------------------- the tokenizer

TRICKY = [
    "A man (wearing a hat) rides a bike.", "The dog's ball isn't red; it's \"blue\"!",
    "Two [people] {ride} bikes... on a road?", "A cat -- on a mat, 3.5 feet & 1/2 high * 2",
    "He said 'hello' and `quoted' it's won't can't I'm we'll they've you'd",
    "e.g. U.S.A. Mr. Smith's cat, cost $5.00 at 10:30 p.m.", "well-known state-of-the-art 50% off a+b=c ~x^y|z",
    "Ünïcödé café naïve — “smart quotes” ‘single’ … end", "  multiple   spaces\tand tabs  ",
    "gonna wanna cannot gotta lemme 'tis 'twas d'ye", "a bike. the dog", "a dog in the park .",
    "Mr. Mrs. Ms. Dr. Prof. St. Jr. Sr. vs. etc. Inc. Ltd. Co. Corp. Mt. Ft. Ave. Rd. Jan. Feb. Sept. Capt. Sgt.",
    "No. 5 fig. 3 no., fig.; no. fig. approx. pm.", "A. B. c. x. I. the end", "plan b.", "at st.",
    "it’s a dog’s life, don’t", "'90s rock 'n' roll o'clock y'all ma'am o'neill l'amour", '"quoted" \'single\' a "b" c',
    "a,b a;b a:b a.b a..b a...b", "3,000 people 1,5 2.5.6 .5 5. -5 +5 5-6 3/4 -1/2 3.5kg 12:30pm",
    "hello-world -dash- --double-- a - b a---b", "he/she and/or a_b", "Don't DON'T Can't CANNOT",
    "the cat's' toy the cats' toys", "A man sitting on a bench... Looking at the sea!!! Really?!",
    "'em 'cause 'round ol' nothin'", "bike.the hello.world. a.b.c a.b.c. ab.cd.", "(dog). (dog.). \"dog\". 'dog'.",
    "dog.) dog.] dog.} dog.” dog.\" dog.' ''tis ``'tis", "a – b a–b 1–2 — a—b", "aside: 5$ $5 50% (50%) ±5 5°",
    "", "...", "!!!", "a", "A BLACK AND WHITE PHOTO OF A TRAIN.",
]


def fuzz_sentences(n, seed=0):
    "Captions built from words, clitics, numbers, acronyms and punctuation attached the ways captions attach it."
    rng = random.Random(seed)
    words = ("a an the man woman dog cat red bike road park sits on of with is two people riding table 3 10 "
             "2x4 1990s well-known state-of-the-art he/she and/or a_b x y i it's dog's don't isn't can't won't i'm "
             "we'll they've you'd let's cats' o'clock 'tis cannot gonna wanna gotta 3.5 3,000 10:30 1/2 .5 e.g. "
             "u.s. a.m. p.m. mr. dr. st. etc. a.b.c hello.world café naïve über").split()
    lead = ["", "", "", "", "(", "[", "{", '"', "'", "``", "“", "‘", "$", "-", "--"]
    trail = ["", "", "", "", "", ".", ",", ";", ":", "!", "?", "...", ")", "]", "}", '"', "'", "”", "’", "%", "!!",
             "?!", "-", ".)", ',"', '."']
    alone = ["&", "%", "$", "/", "*", "=", "+", "-", "--", "—", "–", "…", "...", ".", ",", ";", ":", "!", "?", "(",
             ")", '"', "'", "~", "|", "^"]
    out = []
    for _ in range(n):
        toks = []
        for _ in range(rng.randint(1, 12)):
            if rng.random() < .1: toks.append(rng.choice(alone)); continue
            w = rng.choice(words)
            if rng.random() < .2: w = w.upper() if rng.random() < .5 else w.capitalize()
            front = rng.choice(lead)
            if front in ("-", "--", "$") and w[0].isdigit(): front = ""   # "-1990s" is CoreNLP's own story
            toks.append(front + w + rng.choice(trail))
        out.append((" " if rng.random() < .9 else "  ").join(toks))
    return out


def test_ptb_tokenize_matches_corenlp():
    "One call of pycocoevalcap's PTBTokenizer (CoreNLP 3.4.1, Java) on the tricky and the generated sentences."
    tok = pytest.importorskip("pycocoevalcap.tokenizer.ptbtokenizer")
    if shutil.which("java") is None: pytest.skip("pycocoevalcap's PTBTokenizer runs CoreNLP, which needs Java on the PATH (no `java` found)")
    sents = [s for s in TRICKY if s.strip()] + fuzz_sentences(2000)
    jar = tok.PTBTokenizer().tokenize({i: [{"caption": s}] for i, s in enumerate(sents)})
    differ = [(s, jar[i][0], ptb_tokenize(s)) for i, s in enumerate(sents) if jar[i][0] != ptb_tokenize(s)]
    assert not differ, differ[:5]


def test_ptb_tokenize_examples():
    assert ptb_tokenize("A man (wearing a hat) rides a bike.") == "a man -lrb- wearing a hat -rrb- rides a bike"
    assert ptb_tokenize("Isn't it Mr. Smith's?!") == "is n't it mr. smith 's ?!"
    assert ptb_tokenize("cannot gonna") == "can not gon na"
    assert ptb_tokenize("3,000 people at 10:30, e.g. u.s.a.") == "3,000 people at 10:30 e.g. u.s.a."
    assert ptb_tokenize("line one\nline two") == "line one line two"
    assert ptb_tokenize("") == "" and ptb_tokenize(" ... !") == ""
    with pytest.raises(TypeError, match="text must be a str"): ptb_tokenize(None)


# ---------------------------------------------------------------- METEOR 1.5

def _wait_ready(m):
    "Score one trivial caption: returns once the Java process has loaded its tables."
    m.score({0: ["a"]}, {0: "a"})


@pytest.mark.skipif(meteor_unavailable() is not None, reason=str(meteor_unavailable()))
def test_meteor_equals_pycocoevalcap():
    "One METEOR 1.5 process (starting it takes 15-25 s) serves our wrapper and pycocoevalcap's, in turn."
    from pycocoevalcap.meteor.meteor import Meteor as CocoMeteor

    class Borrowed(CocoMeteor):          # pycocoevalcap's wrapper around our running jar process
        def __init__(self, proc): self.meteor_p, self.lock = proc, threading.Lock()
        def __del__(self): pass

    refs, hyps = random_corpus(random.Random(4), 200, words=WORDS)
    with Meteor() as m:
        s = m.score(REFS, HYPS)
        assert abs(s.value - COCO["METEOR"]) < 1e-9
        assert all(abs(s.per_image[k] - v) < 1e-5 for k, v in zip(REFS, COCO_PER_IMAGE["METEOR"]))
        assert abs(s.value - sum(s.per_image.values()) / 3) > 1e-3     # pooled, not the mean of the images
        ours_ = m.score(refs, hyps, tokenize=False)
        value, per = Borrowed(m._proc).compute_score(refs, {k: [v] for k, v in hyps.items()})
        assert abs(ours_.value - value) < 1e-9
        assert max(abs(a - b) for a, b in zip(per, ours_.per_image.values())) < 1e-9
        # the same scorer serves caption_scores and meteor(scorer=...), and refuses the field separator
        all_ = caption_scores(REFS, HYPS, meteor=m)
        assert list(all_) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D"]
        assert all(abs(v - COCO[k]) < 1e-9 for k, v in all_.items())
        assert meteor(REFS, HYPS, scorer=m).value == s.value
        odd = m.score({1: ["a cat ||| on a mat"], 2: ["x"]}, {1: "a cat on a mat |||", 2: ""})
        assert set(odd.per_image) == {1, 2} and odd.per_image[2] == 0.0
    with pytest.raises(RuntimeError, match="closed"): m.score(REFS, HYPS)


def test_meteor_unavailable_messages(monkeypatch):
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    assert "Java" in meteor_unavailable()
    with pytest.raises(RuntimeError, match="needs Java"): Meteor()
    with pytest.raises(RuntimeError, match="needs Java"): caption_scores(REFS, HYPS)
    monkeypatch.setattr(metrics.shutil, "which", lambda name: "/usr/bin/java")
    monkeypatch.setattr(metrics, "_meteor_jar", lambda: None)
    assert "pycocoevalcap" in meteor_unavailable()


def test_meteor_refuses_bad_input_before_starting_java(monkeypatch):
    def boom(*a, **k): raise AssertionError("Java must not start for bad input")
    monkeypatch.setattr(metrics.subprocess, "Popen", boom)
    with pytest.raises(ValueError, match="same image ids"): meteor({1: ["a"]}, {2: "a"})
    with pytest.raises(TypeError, match="meteor must be True, False or a Meteor"): caption_scores(REFS, HYPS, meteor="yes")


def _debian_wordnet(tmp_path):
    "An NLTK_DATA directory made from Debian's wordnet-base files, or None."
    src = "/usr/share/wordnet"
    if not os.path.isfile(f"{src}/data.noun") or not os.path.isfile(f"{src}/index.sense"): return None
    d = tmp_path / "corpora" / "wordnet"; d.mkdir(parents=True)
    for f in os.listdir(src):
        if os.path.isfile(f"{src}/{f}"): shutil.copy(f"{src}/{f}", d / f)
    names = ("adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
             "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
             "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
             "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
             "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
             "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl").split()
    pos = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}
    (d / "lexnames").write_text("".join(f"{i:02d}\t{n}\t{pos[n.split('.')[0]]}\n" for i, n in enumerate(names)))
    return tmp_path


def test_nltk_meteor_is_a_different_number(tmp_path, monkeypatch):
    "NLTK's meteor_score on the reference vector: 0.628 (with WordNet when Debian's files exist; without, as the notebook)."
    ms = pytest.importorskip("nltk.translate.meteor_score")
    class NoWordNet:
        def synsets(self, *a, **k): return []
    scores = [ms.meteor_score([r.split() for r in REFS[k]], HYPS[k].split(), wordnet=NoWordNet()) for k in REFS]
    assert abs(sum(scores) / 3 - 0.6281934684) < 1e-9
    root = _debian_wordnet(tmp_path)
    if root is None: pytest.skip("Debian's wordnet-base and wordnet-sense-index are not installed")
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader
    monkeypatch.setattr(nltk.data, "path", [str(root)] + nltk.data.path)   # NLTK reads only from its data path
    wn = WordNetCorpusReader(nltk.data.find("corpora/wordnet"), None)
    assert wn.synsets("bike")
    with_wn = [ms.meteor_score([r.split() for r in REFS[k]], HYPS[k].split(), wordnet=wn) for k in REFS]
    assert with_wn == scores


# ---------------------------------------------------------------- sacrebleu

def test_sacrebleu_conventions():
    sacrebleu = pytest.importorskip("sacrebleu")
    hyp, streams = [HYPS[k] for k in REFS], [[REFS[k][j] for k in REFS] for j in range(2)]
    assert abs(sacrebleu.corpus_bleu(hyp, streams).score - 26.85) < 0.01           # exp smoothing
    assert sacrebleu.corpus_bleu(hyp, streams, smooth_method="none").score == 0.0
    rng = random.Random(5)
    for _ in range(10):
        refs, hyps = random_corpus(rng, 30, vocab=6)
        refs = {k: (v * 3)[:3] for k, v in refs.items()}                            # sacrebleu: 3 streams
        sb = sacrebleu.corpus_bleu([hyps[k] for k in refs], [[refs[k][j] for k in refs] for j in range(3)],
                                   tokenize="none", smooth_method="none").score / 100
        ours_ = bleu(refs, hyps, tokenize=False).value
        if sb > 0: assert abs(sb - ours_) < 1e-6


# ---------------------------------------------------------------- behaviour a reader can check by hand

def test_bleu_hand_values():
    # one image: 5/5 unigrams, 3/4 bigrams, closest reference length 6 > 5 -> brevity penalty e^(1 - 6/5)
    s = bleu(REFS, HYPS, n=2).per_image[1]
    assert abs(s - math.sqrt(5 / 5 * 3 / 4) * math.exp(1 - 6 / 5)) < 1e-8
    assert abs(bleu({1: ["a b c d"]}, {1: "a b c d"}).value - 1) < 1e-6
    # clipping: "the the the" gets one "the" from a reference that has one
    assert abs(bleu({1: ["the cat"]}, {1: "the the the"}, n=1).value - 1 / 3) < 1e-6
    # closest reference length, the shorter on a tie: |h| = 3, references of 2 and 4 -> r = 2, no penalty
    assert abs(bleu({1: ["a b", "a b c d"]}, {1: "a b c"}, n=1).value - 1) < 1e-6
    # longer hypothesis: no penalty; shorter: e^(1 - r/c)
    assert abs(bleu({1: ["a b c d e f"]}, {1: "a b c"}, n=1).value - math.exp(1 - 6 / 3)) < 1e-6
    # pycocoevalcap's constants: no 4-gram match gives ~1e-4, not 0
    assert 0 < bleu({1: ["a b c d e"]}, {1: "a b c e d"}).value < 1e-3


def test_rouge_hand_values():
    assert rouge_l({1: ["a b c"]}, {1: "a b c"}).value == 1.0
    # LCS("a b c d", "a c") = 2: P = 1, R = 1/2, F = (1 + b^2) P R / (R + b^2 P) with b = 1.2
    f = 2.44 * 1 * 0.5 / (0.5 + 1.44)
    assert abs(rouge_l({1: ["a b c d"]}, {1: "a c"}).value - f) < 1e-12
    assert abs(rouge_l({1: ["a b c d"]}, {1: "a c"}, beta=1.0).value - 2 / 3) < 1e-12
    # best precision and best recall may come from different references
    s = rouge_l({1: ["a b", "a b c d e f"]}, {1: "a b c"}).value
    p, r = 1.0, 1.0                  # P from the long reference (3/3), R from the short one (2/2)
    assert abs(s - 2.44 * p * r / (r + 1.44 * p)) < 1e-12
    assert rouge_l({1: ["a b"]}, {1: ""}).value == 0.0
    with pytest.raises(ValueError, match="beta must be a positive number"): rouge_l(REFS, HYPS, beta=0)


def test_cider_hand_values():
    # an n-gram present in every image's references has idf 0
    assert cider_d({1: ["a b"], 2: ["a c"]}, {1: "a", 2: "a"}).value == 0.0
    # perfect captions whose n-grams no other image has score 10
    refs = {1: ["a red circle left"], 2: ["b blue square right"]}
    assert abs(cider_d(refs, {1: "a red circle left", 2: "b blue square right"}).value - 10.0) < 1e-9
    # by hand: unigram cosine 2 / (sqrt 2 * 2), bigram cosine 1 / sqrt 3, no 3- or 4-gram, length penalty for 2 vs 4
    s = cider_d({1: ["p q r s"], 2: ["t"]}, {1: "p q", 2: "t"}).per_image
    assert abs(s[1] - 10 * math.exp(-4 / 72) * (1 / math.sqrt(2) + 1 / math.sqrt(3)) / 4) < 1e-9
    assert abs(s[2] - 10 * 1 / 4) < 1e-9
    # sigma widens the penalty
    assert cider_d(REFS, HYPS, sigma=100).value > cider_d(REFS, HYPS).value
    # clipping: repeating a rare word does not add to the score
    rep = cider_d({1: ["red circle"], 2: ["blue square"]}, {1: "red red red circle", 2: "blue square"}).per_image[1]
    plain = cider_d({1: ["red circle"], 2: ["blue square"]}, {1: "red circle", 2: "blue square"}).per_image[1]
    assert rep < plain
    with pytest.raises(ValueError, match="sigma must be a positive number"): cider_d(REFS, HYPS, sigma=-1)


# ---------------------------------------------------------------- properties

captions = st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=1, max_size=8).map(" ".join)
corpora = st.dictionaries(st.integers(0, 30), st.tuples(st.lists(captions, min_size=1, max_size=4), captions),
                          min_size=1, max_size=8)


@settings(max_examples=60, deadline=None)
@given(corpora, st.randoms(use_true_random=False))
def test_properties(corpus, rnd):
    refs = {k: r for k, (r, _) in corpus.items()}
    hyps = {k: h for k, (_, h) in corpus.items()}
    s = ours(refs, hyps)
    for name, v in s.items():
        assert isinstance(v, MetricScore) and float(v) == v.value and f"{v:.3f}" == f"{v.value:.3f}"
        assert 0 <= v.value <= (10 + 1e-9 if name == "CIDEr-D" else 1 + 1e-9), name
        assert set(v.per_image) == set(refs)
    # the order of the images, and their names, change nothing
    keys = list(refs); rnd.shuffle(keys)
    renamed = {f"id{k}": refs[k] for k in keys}, {f"id{k}": hyps[k] for k in keys}
    s2 = ours(*renamed)
    for name in s: assert abs(s[name].value - s2[name].value) < 1e-9, name
    # the mean of per-image scores is the corpus score where the metric is a mean
    for name in ("ROUGE-L", "CIDEr-D"):
        assert abs(s[name].value - sum(s[name].per_image.values()) / len(refs)) < 1e-9
    # a hypothesis equal to its only reference
    same = {k: [h] for k, h in hyps.items()}
    assert rouge_l(same, hyps, tokenize=False).value == 1.0
    assert abs(bleu(same, hyps, n=1, tokenize=False).value - 1) < 1e-6


def test_bad_input():
    for refs, hyps, err, msg in [
        ([], {}, TypeError, "must be dicts"), ({}, {}, ValueError, "refs is empty"),
        ({1: ["a"]}, {2: "a"}, ValueError, r"ids without a hypothesis: \[1\], hypotheses without references: \[2\]"),
        ({1: "a"}, {1: "a"}, TypeError, r"refs\[1\] must be a non-empty list of str"),
        ({1: []}, {1: "a"}, TypeError, "non-empty list"), ({1: ["a", 2]}, {1: "a"}, TypeError, "non-empty list"),
        ({1: ["a"]}, {1: ["a"]}, TypeError, r"hyps\[1\] must be one str"),
    ]:
        for fn in (bleu, rouge_l, cider_d, lambda r, h: caption_scores(r, h, meteor=False)):
            with pytest.raises(err, match=msg): fn(refs, hyps)
    for n in (0, 5, 2.0, True):
        with pytest.raises(ValueError, match="n must be an integer in 1..4"): bleu(REFS, HYPS, n=n)


def test_tokenize_flag():
    refs, hyps = {1: ["A Dog, running."]}, {1: "a dog running"}
    assert bleu(refs, hyps, n=3).value > 0.99                     # PTB: "a dog running"
    assert bleu(refs, hyps, n=3, tokenize=False).value < 0.01     # "A", "Dog,", "running."
    assert rouge_l(refs, hyps).value == 1.0 and rouge_l(refs, hyps, tokenize=False).value < 1


# ---------------------------------------------------------------- details the parity tests cannot reach

def test_lcs_against_the_dynamic_program():
    from mmlab.metrics import _lcs
    def table(a, b):
        t = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i in range(len(a)):
            for j in range(len(b)): t[i + 1][j + 1] = t[i][j] + 1 if a[i] == b[j] else max(t[i][j + 1], t[i + 1][j])
        return t[-1][-1]
    rng = random.Random(6)
    for _ in range(400):
        a, b = ([rng.choice("abcd") for _ in range(rng.randint(0, 12))] for _ in range(2))
        assert _lcs(a, b) == table(a, b), (a, b)
    assert _lcs([], ["a"]) == 0 and _lcs(["a"], []) == 0


def test_defaults_tokenize_and_check_arguments():
    refs, hyps = {1: ["A Red circle.", "the red circle!"], 2: ["A blue square."]}, {1: "a red circle", 2: "A blue square"}
    assert cider_d(refs, hyps).value == cider_d({1: ["a red circle", "the red circle"], 2: ["a blue square"]},
                                                  {1: "a red circle", 2: "a blue square"}, tokenize=False).value
    assert cider_d(refs, hyps).value != cider_d(refs, hyps, tokenize=False).value
    assert caption_scores(refs, hyps, meteor=False) == caption_scores(
        {1: ["a red circle", "the red circle"], 2: ["a blue square"]}, {1: "a red circle", 2: "a blue square"},
        tokenize=False, meteor=False)
    for bad in (0, 0.0, -1, "6"):
        with pytest.raises(ValueError, match="sigma must be a positive number"): cider_d(REFS, HYPS, sigma=bad)
    assert cider_d(REFS, HYPS, sigma=0.5).value < cider_d(REFS, HYPS).value
    for bad in (0, -1.0, None):
        with pytest.raises(ValueError, match="beta must be a positive number"): rouge_l(REFS, HYPS, beta=bad)
    assert rouge_l(REFS, HYPS, beta=0.5).value != rouge_l(REFS, HYPS).value
    # an empty hypothesis or an empty reference scores 0 on ROUGE-L, not 1
    assert rouge_l({1: ["a b"]}, {1: "..."}).value == 0.0 and rouge_l({1: ["..."], 2: ["a"]}, {1: "a", 2: "a"}).per_image[1] == 0.0
    assert rouge_l({1: ["", "a b"]}, {1: "a"}, tokenize=False).per_image[1] == pytest.approx(2.44 * 0.5 / (0.5 + 1.44))


class FakeMeteor(Meteor):
    "A Meteor without Java: records what it is asked and answers 0.25 per image."
    instances = []
    def __init__(self):
        self.calls, self.closed = [], False
        FakeMeteor.instances.append(self)
    def score(self, refs, hyps, tokenize=True):
        self.calls.append((refs, hyps, tokenize))
        return MetricScore(0.25, {k: 0.25 for k in refs})
    def close(self): self.closed = True


def test_caption_scores_passes_tokenised_text_to_meteor(monkeypatch):
    fake = FakeMeteor()
    s = caption_scores({"x": ["A cat, sitting."]}, {"x": "A cat!"}, meteor=fake)
    assert list(s) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D"] and s["METEOR"] == 0.25
    assert fake.calls == [({0: ["a cat sitting"]}, {0: "a cat"}, False)]
    # meteor=True starts a scorer for this call and closes it
    monkeypatch.setattr(metrics, "Meteor", FakeMeteor)
    FakeMeteor.instances.clear()
    s = caption_scores({"x": ["A cat."]}, {"x": "A dog."})
    assert s["METEOR"] == 0.25 and len(FakeMeteor.instances) == 1 and FakeMeteor.instances[0].closed
    assert FakeMeteor.instances[0].calls == [({0: ["a cat"]}, {0: "a dog"}, False)]
    with pytest.raises(TypeError, match="meteor must be True, False or a Meteor, got 'yes'"): caption_scores(REFS, HYPS, meteor="yes")
    assert "METEOR" not in caption_scores(REFS, HYPS, meteor=False)


def test_meteor_function_uses_the_scorer_it_is_given(monkeypatch):
    fake = FakeMeteor()
    assert meteor(REFS, HYPS, scorer=fake).value == 0.25 and fake.calls[-1] == (REFS, HYPS, True)
    assert meteor(REFS, HYPS, tokenize=False, scorer=fake).value == 0.25 and fake.calls[-1][2] is False
    monkeypatch.setattr(metrics, "Meteor", FakeMeteor)
    FakeMeteor.instances.clear()
    assert meteor(REFS, HYPS).value == 0.25 and FakeMeteor.instances[0].closed and FakeMeteor.instances[0].calls[0][2] is True


def test_meteor_jar_is_found_in_pycocoevalcap():
    pytest.importorskip("pycocoevalcap")
    jar = metrics._meteor_jar()
    assert jar is not None and jar.name == "meteor-1.5.jar" and (jar.parent / "data" / "paraphrase-en.gz").is_file()


def test_error_messages_name_what_was_received():
    with pytest.raises(TypeError, match="text must be a str, got list"): ptb_tokenize(["a"])
    with pytest.raises(TypeError, match="must be dicts .* got list and dict"): bleu(["a"], {1: "a"})
    with pytest.raises(TypeError, match="got dict and list"): bleu({1: ["a"]}, ["a"])
    with pytest.raises(TypeError, match=r"refs\[1\] must be a non-empty list of str"): bleu({1: {"a set"}}, {1: "a"})
    with pytest.raises(TypeError, match=r"hyps\[1\] must be one str, got list"): bleu({1: ["a"]}, {1: ["a"]})
    many = {i: ["a"] for i in range(8)}
    with pytest.raises(ValueError, match=r"ids without a hypothesis: \[0, 1, 2, 3, 4\], hypotheses"): bleu(many, {})
    with pytest.raises(ValueError, match=r"hypotheses without references: \[0, 1, 2, 3, 4\]$"): bleu({"x": ["a"]}, {**{i: "a" for i in range(8)}, "x": "a"})


def test_meteor_availability_on_this_machine(monkeypatch):
    "Without patches: None exactly when java is on the PATH and pycocoevalcap ships the jar."
    expected = shutil.which("java") is not None and metrics._meteor_jar() is not None
    assert (meteor_unavailable() is None) == expected
    monkeypatch.setattr(metrics.importlib.util, "find_spec", lambda name: None)
    assert metrics._meteor_jar() is None
