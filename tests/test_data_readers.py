"Readers of the public datasets, each on a tiny fixture written here in the dataset's published format."
import csv
import json

import numpy as np
import pytest
from PIL import Image

from mmlab.data.readers import ReaderError, read_av_mnist, read_coco_captions, read_meld, read_msrvtt, read_vqa

MELD_HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID", "Season",
               "Episode", "StartTime", "EndTime"]

def _meld(tmp_path, rows):
    f = tmp_path / "dev_sent_emo.csv"
    with open(f, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh); w.writerow(MELD_HEADER); w.writerows(rows)
    return f

def test_meld(tmp_path):
    f = _meld(tmp_path, [[1, "Okay, fine…", "Chandler", "Neutral", "neutral", 3, 2, 1, 5, "00:01:02,500", "00:01:04,000"],
                         [2, "No way!", "Joey", "disgust", "negative", 3, 3, 1, 5, "00:01:04,100", "00:01:05,000"]])
    (tmp_path / "dia3_utt3.mp4").write_bytes(b"stand-in clip")
    ds = read_meld(f, tmp_path)
    assert ds["text"] == ["Okay, fine…", "No way!"] and ds["emotion"] == ["neutral", "disgust"]
    assert ds["emotion_id"] == [0, 6] and ds["sentiment_id"] == [1, 0] and ds["has_video"] == [False, True]
    assert ds[0]["start"] == pytest.approx(62.5) and ds[1]["video_path"].endswith("dia3_utt3.mp4")
    assert ds["sample_id"] == ["meld-dia3-utt2", "meld-dia3-utt3"]

def test_meld_relative_path_under_data_dir(tmp_path, monkeypatch):
    (tmp_path / "MELD").mkdir()
    _meld(tmp_path / "MELD", [[1, "hi", "Ross", "joy", "positive", 0, 0, 1, 1, "00:00:00,000", "00:00:01,000"]])
    monkeypatch.setenv("MMLAB_DATA_DIR", str(tmp_path))
    assert read_meld("MELD/dev_sent_emo.csv")["speaker"] == ["Ross"]

@pytest.mark.parametrize("row, words", [
    ([1, "hi", "Ross", "bored", "positive", 0, 0, 1, 1, "00:00:00,000", "00:00:01,000"], ["line 2", "'bored'", "joy"]),
    ([1, "hi", "Ross", "joy", "positive", "x", 0, 1, 1, "00:00:00,000", "00:00:01,000"], ["line 2", "bad id or time"]),
    ([1, "hi", "Ross", "joy", "positive", 0, 0, 1, 1, "soon", "00:00:01,000"], ["line 2", "bad id or time"]),
])
def test_meld_malformed_rows(tmp_path, row, words):
    with pytest.raises(ReaderError) as e: read_meld(_meld(tmp_path, [row]))
    assert all(w in str(e.value) for w in words), str(e.value)

def test_meld_missing_and_headerless(tmp_path):
    with pytest.raises(ReaderError, match="file not found"): read_meld(tmp_path / "train_sent_emo.csv")
    (tmp_path / "empty.csv").write_text(",".join(MELD_HEADER) + "\n")
    with pytest.raises(ReaderError, match="no rows"): read_meld(tmp_path / "empty.csv")

def _vqa(tmp_path, n_ann=2):
    q = {"info": {"year": 2017}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": "train2014",
         "questions": [{"image_id": 9, "question": "Is there a dog?", "question_id": 90},
                       {"image_id": 9, "question": "How many cats?", "question_id": 91}]}
    ans = lambda qid, a, t: {"question_type": "is there a", "multiple_choice_answer": a[0], "image_id": 9, "answer_type": t,
                             "question_id": qid, "answers": [{"answer": x, "answer_confidence": "yes", "answer_id": i + 1} for i, x in enumerate(a)]}
    a = {"info": {}, "license": {}, "data_subtype": "train2014", "data_type": "mscoco",
         "annotations": [ans(90, ["yes"] * 9 + ["no"], "yes/no"), ans(91, ["2"] * 6 + ["3"] * 4, "number")][:n_ann]}
    (tmp_path / "v2_OpenEnded_mscoco_train2014_questions.json").write_text(json.dumps(q))
    (tmp_path / "v2_mscoco_train2014_annotations.json").write_text(json.dumps(a))
    return tmp_path / "v2_OpenEnded_mscoco_train2014_questions.json", tmp_path / "v2_mscoco_train2014_annotations.json"

def test_vqa(tmp_path):
    qf, af = _vqa(tmp_path)
    Image.new("RGB", (4, 4)).save(tmp_path / "COCO_train2014_000000000009.jpg")
    ds = read_vqa(qf, af, tmp_path)
    assert ds["question_id"] == [90, 91] and len(ds[1]["answers"]) == 10 and ds[1]["answers"].count("3") == 4
    assert ds["answer_type"] == ["yes/no", "number"] and ds[0]["image_path"].endswith("COCO_train2014_000000000009.jpg")
    assert read_vqa(qf)["answers"] == [[], []]                      # test splits have no annotations

def test_vqa_errors(tmp_path):
    qf, af = _vqa(tmp_path, n_ann=1)
    with pytest.raises(ReaderError, match="question 91 has no annotation"): read_vqa(qf, af)
    af.write_text(json.dumps({"annotations": [{"question_id": 90}]}))
    with pytest.raises(ReaderError, match=r"lacks \['answers', 'multiple_choice_answer'\]"): read_vqa(qf, af)
    qf.write_text("[1, 2]")
    with pytest.raises(ReaderError, match="should hold a JSON object, found list"): read_vqa(qf)
    qf.write_text("{not json")
    with pytest.raises(ReaderError, match="not valid JSON"): read_vqa(qf)

def test_coco_captions(tmp_path):
    obj = {"info": {}, "licenses": [], "images": [{"license": 1, "file_name": "000000000139.jpg", "height": 4, "width": 6, "id": 139},
                                                  {"license": 1, "file_name": "000000000285.jpg", "height": 4, "width": 4, "id": 285}],
           "annotations": [{"image_id": 139, "id": 1, "caption": "A woman stands in the kitchen."},
                           {"image_id": 285, "id": 2, "caption": "A big brown bear."},
                           {"image_id": 139, "id": 3, "caption": " A room with a table. "}]}
    (tmp_path / "captions_val2017.json").write_text(json.dumps(obj))
    Image.new("RGB", (6, 4)).save(tmp_path / "000000000139.jpg")
    ds = read_coco_captions(tmp_path / "captions_val2017.json", tmp_path)
    assert ds[0]["captions"] == ["A woman stands in the kitchen.", "A room with a table."] and ds["width"] == [6, 4]
    assert ds["image_path"][1] is None and ds["image_path"][0].endswith("000000000139.jpg")
    obj["annotations"].append({"image_id": 999, "id": 4, "caption": "orphan"})
    (tmp_path / "captions_val2017.json").write_text(json.dumps(obj))
    with pytest.raises(ReaderError, match="not in 'images'"): read_coco_captions(tmp_path / "captions_val2017.json")

def test_msrvtt(tmp_path):
    obj = {"info": {"contributor": "Microsoft"}, "videos": [
        {"category": 9, "url": "u0", "video_id": "video0", "start time": 137.72, "end time": 149.44, "split": "train", "id": 0},
        {"category": 2, "url": "u1", "video_id": "video7010", "start time": 1.0, "end time": 11.0, "split": "test", "id": 7010}],
        "sentences": [{"caption": "a car is shown", "video_id": "video0", "sen_id": 0},
                      {"caption": "a man talks", "video_id": "video7010", "sen_id": 1},
                      {"caption": "a red car drives", "video_id": "video0", "sen_id": 2}]}
    f = tmp_path / "train_val_videodatainfo.json"; f.write_text(json.dumps(obj))
    (tmp_path / "video0.mp4").write_bytes(b"clip")
    ds = read_msrvtt(f, tmp_path)
    assert ds["video_id"] == ["video0", "video7010"] and ds[0]["captions"] == ["a car is shown", "a red car drives"]
    assert ds["has_video"] == [True, False] and ds[0]["start"] == pytest.approx(137.72)
    assert read_msrvtt(f, split="test")["video_id"] == ["video7010"]
    obj["videos"][0].pop("split"); f.write_text(json.dumps(obj))
    with pytest.raises(ReaderError, match=r"lacks \['split'\]"): read_msrvtt(f)

def _avm(root, n=(4, 4, 4), audio_shape=(112, 112), img_shape=(784,)):
    rng = np.random.default_rng(0)
    (root / "image").mkdir(parents=True); (root / "audio").mkdir()
    np.save(root / "image" / "test_data.npy", rng.random((n[0], *img_shape)).astype(np.float32))
    np.save(root / "audio" / "test_data.npy", rng.random((n[1], *audio_shape)).astype(np.float32))
    np.save(root / "test_labels.npy", np.arange(n[2]) % 10)

def test_av_mnist(tmp_path):
    _avm(tmp_path)
    ds = read_av_mnist(tmp_path, "test")
    assert ds["label"] == [0, 1, 2, 3] and ds[1]["image"].size == (28, 28) and ds[1]["image"].mode == "L"
    img = np.load(tmp_path / "image" / "test_data.npy")
    assert np.abs(np.asarray(ds[1]["image"], float) - (img[1].reshape(28, 28) * 255).astype(np.uint8)).max() == 0
    assert np.allclose(np.asarray(ds[2]["audio_spectrogram"]), np.load(tmp_path / "audio" / "test_data.npy")[2])

@pytest.mark.parametrize("kw, words", [(dict(n=(4, 3, 4)), ["3 audio", "equal counts"]),
                                       (dict(audio_shape=(64, 64)), ["(N, 112, 112)", "(4, 64, 64)"]),
                                       (dict(img_shape=(10, 10)), ["(N, 784)"])])
def test_av_mnist_malformed(tmp_path, kw, words):
    _avm(tmp_path, **kw)
    with pytest.raises(ReaderError) as e: read_av_mnist(tmp_path, "test")
    assert all(w in str(e.value) for w in words), str(e.value)

def test_av_mnist_refuses_pickles_and_missing_files(tmp_path):
    _avm(tmp_path)
    np.save(tmp_path / "test_labels.npy", np.array([{"x": 1}] * 4, dtype=object), allow_pickle=True)
    with pytest.raises(ReaderError, match="plain NumPy array"): read_av_mnist(tmp_path, "test")
    with pytest.raises(ReaderError, match="file not found.*train_data.npy"): read_av_mnist(tmp_path, "train")
