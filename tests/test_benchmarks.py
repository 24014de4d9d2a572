"""The benchmark evaluators: GenEval end to end on the Shapes world's detector, HPDv3 and Pick-a-Pic/Parti with
fake rewards, the clear errors, ``driftbench evaluate`` on a tiny run, the reward environments and the paper table."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.api import Cond

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------------
# Test generators and rewards
# ---------------------------------------------------------------------------------------------------

class RenderGenerator:
    """A Generator that renders Shapes scenes: image (prompt, seed) is a scene sampled with that seed, correct
    for its prompt unless the seed's draw says otherwise (about a third are wrong); the reference renders every
    image correct. Records the noise seeds it was asked for."""

    name = "render"
    resolution = 64
    latent_shape = (1, 1, 1)
    device = torch.device("cpu")

    def __init__(self, metas):
        self.metas = {m["prompt"]: m for m in metas}
        self.prompts = list(self.metas)
        self.seeds: list[int] = []
        self.truth: dict[tuple[str, int], bool] = {}
        self._reference = False

    def encode(self, prompts):
        return Cond({"index": torch.tensor([self.prompts.index(p) for p in prompts], dtype=torch.float64)})

    def noise(self, seeds):
        self.seeds += list(seeds)
        return torch.tensor(seeds, dtype=torch.float64).reshape(-1, 1, 1, 1)

    def latents(self, noise, cond):
        return torch.cat([noise.reshape(-1, 1), cond.tensors["index"].reshape(-1, 1)], dim=1).reshape(-1, 2, 1, 1)

    def decode(self, latents):
        from harness.shapes.render import render_batch

        out = []
        for seed, index in latents.reshape(-1, 2).long().tolist():
            prompt = self.prompts[index]
            rng = np.random.default_rng([seed, index])
            correct = self._reference or bool(rng.random() > 0.35)
            self.truth[(prompt, seed)] = correct
            out.append(render_batch([self.metas[prompt]], rng, correct=correct)[0])
        return torch.cat(out)

    @contextlib.contextmanager
    def reference(self):
        self._reference = True
        try:
            yield
        finally:
            self._reference = False


class FlatGenerator(RenderGenerator):
    """Flat grey images whose brightness is a function of (prompt, seed): cheap input for score-only tests."""

    def __init__(self):
        self.prompts: list[str] = []
        self.seeds = []

    def encode(self, prompts):
        for p in prompts:
            if p not in self.prompts:
                self.prompts.append(p)
        return super().encode(prompts)

    def decode(self, latents):
        seed, index = latents.reshape(-1, 2).T
        level = ((seed * 7 + index * 13) % 97 / 97.0).float()
        return level.reshape(-1, 1, 1, 1).expand(-1, 3, 8, 8).clone()


class Const:
    """A black-box reward answering a constant."""

    differentiable = False
    version = 1
    requires = "tests only"

    def __init__(self, name, value):
        self.name, self.value = name, value

    def score(self, images, prompts):
        return [self.value] * len(prompts)


class Brightness(Const):
    def score(self, images, prompts):
        return images.mean(dim=(1, 2, 3)).tolist()


def make_brightness():
    return Brightness("test-brightness", 0)


def make_half():
    return Const("test-half", 0.5)


def make_tenth():
    return Const("test-tenth", 0.1)


@pytest.fixture
def fake_rewards(monkeypatch):
    from rewards import REWARDS

    for name in ("brightness", "half", "tenth"):
        monkeypatch.setitem(REWARDS._entries, f"test-{name}", f"tests.test_benchmarks:make_{name}")


def shapes_metas(per_tag: int = 1) -> list[dict]:
    from harness.shapes.prompts import TAGS, all_prompts

    metas = all_prompts()
    return [m for tag in TAGS for m in [x for x in metas if x["tag"] == tag][:per_tag]]


def write_jsonl(path: Path, metas) -> Path:
    path.write_text("".join(json.dumps(m) + "\n" for m in metas))
    return path


# ---------------------------------------------------------------------------------------------------
# GenEval
# ---------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_geneval_end_to_end_on_the_shapes_detector(tmp_path):
    import pandas as pd

    from evals.geneval import summarize
    from evals.geneval_bench import Config, GenEvalBenchmark, read_results
    from evals.geneval_layout import read_layout

    metas = shapes_metas(per_tag=2)  # 12 prompts, two per tag
    gen = RenderGenerator(metas)
    bench = GenEvalBenchmark(Config(metadata=str(write_jsonl(tmp_path / "meta.jsonl", metas)), detector="shapes"))
    dest = tmp_path / "geneval"
    summary = bench.run(gen, dest, batch_size=5, info={"profile": "shapes"})

    # GenEval's layout, read back by hand with the rules of evaluate_images.py.
    (dest / "notes").mkdir()  # not numbered: ignored
    (dest / "00000" / "samples" / "readme.txt").write_text("ignored")
    folders = sorted(d for d in os.listdir(dest) if os.path.isdir(dest / d) and d.isdigit())
    assert folders == [f"{i:05d}" for i in range(12)]
    for i, name in enumerate(folders):
        with open(dest / name / "metadata.jsonl") as f:
            assert json.load(f) == metas[i]  # exactly one JSON object
        pngs = sorted(n for n in os.listdir(dest / name / "samples") if re.match(r"\d+\.png", n))
        assert pngs == ["00000.png", "00001.png", "00002.png", "00003.png"]
        assert (dest / name / "grid.png").is_file()
    assert [e.metadata for e in read_layout(dest)] == metas and all(len(e.images) == 4 for e in read_layout(dest))
    # Noise: sample k of every prompt used seed 42 + k.
    assert gen.seeds == [42, 43, 44, 45] * 12 and summary["seeds"] == [42, 43, 44, 45]

    rows = read_results(dest / "results.jsonl")
    assert len(rows) == 48
    assert set(rows[0]) >= {"filename", "tag", "metadata", "correct", "reason", "prompt", "details"}
    assert all(isinstance(r["metadata"], str) and (r["reason"] == "") == r["correct"] for r in rows)
    # The detector agrees with the scenes' ground truth on these clean renders, and some images are wrong.
    truth = [gen.truth[(json.loads(r["metadata"])["prompt"], 42 + int(Path(r["filename"]).stem))] for r in rows]
    assert [r["correct"] for r in rows] == truth and 0 < sum(truth) < 48

    # The summary: evals.geneval.summarize of the same rows, and GenEval's summary_scores.py arithmetic in pandas.
    assert summary["scores"] == summarize(rows)
    df = pd.read_json(dest / "results.jsonl", orient="records", lines=True)
    task_scores = {tag: g["correct"].mean() for tag, g in df.groupby("tag", sort=False)}
    stored = json.loads((dest / "summary.json").read_text())["scores"]
    for tag, value in task_scores.items():
        assert stored[tag] == pytest.approx(value)
    assert len(task_scores) == 6
    assert stored["overall"] == pytest.approx(np.mean(list(task_scores.values())))
    assert stored["correct_images"] == pytest.approx(df["correct"].mean())
    assert stored["correct_prompts"] == pytest.approx(df.groupby("metadata")["correct"].any().mean())
    assert summary["counts"]["images"] == 48 and summary["counts"]["prompts"] == 12

    # The same folder scored through the Shapes GenEval reward (binary correctness) gives the same verdicts.
    again = GenEvalBenchmark(Config(images=str(dest), reward="shapes-geneval")).run(None, tmp_path / "via-reward")
    assert [r["correct"] for r in read_results(tmp_path / "via-reward" / "results.jsonl")] == truth
    assert again["scores"] == summary["scores"] and again["reasons"] is False


@pytest.mark.unit
def test_write_layout_and_read_layout_rules(tmp_path):
    from evals.geneval_layout import read_layout, write_layout

    metas = shapes_metas()[:2]
    images = [np.full((3, 8, 8, 3), 100 + i, np.uint8) for i in range(2)]
    write_layout(tmp_path, metas, images, grid=False)
    (tmp_path / "00001" / "samples" / "00003.png.bak").write_text("x")  # \d+\.png matches a prefix, as upstream
    (tmp_path / "00001" / "samples" / "x00004.png").write_text("x")     # ignored
    (tmp_path / "7a").mkdir()                                            # not a digit folder: ignored
    entries = read_layout(tmp_path)
    assert [e.index for e in entries] == [0, 1] and [e.metadata for e in entries] == metas
    assert [p.name for p in entries[0].images] == ["00000.png", "00001.png", "00002.png"]
    assert "00003.png.bak" in [p.name for p in entries[1].images] and "x00004.png" not in [p.name for p in entries[1].images]
    # A metadata.jsonl that is not one JSON object (two lines) is a clear error naming the file.
    (tmp_path / "00001" / "metadata.jsonl").write_text(json.dumps(metas[1]) + "\n" + json.dumps(metas[0]) + "\n")
    with pytest.raises(ValueError, match=r"00001/metadata.jsonl: not one JSON object .*json.load"):
        read_layout(tmp_path)
    with pytest.raises(ValueError, match="2 metadata objects but 1 image sets"):
        write_layout(tmp_path / "b", metas, images[:1])


@pytest.mark.unit
def test_metadata_file_errors(tmp_path):
    from evals.geneval_bench import Config, GenEvalBenchmark
    from evals.geneval_layout import load_metadata

    metas = shapes_metas()
    good = "".join(json.dumps(m) + "\n" for m in metas[:2])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good + '{"tag": "counting", "include": [\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:3: not a JSON object \(.* at column"):
        load_metadata(bad)
    bad.write_text(good + "\n" + json.dumps({**metas[0], "tag": "colour"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:4: unknown tag 'colour'"):
        load_metadata(bad)
    bad.write_text(json.dumps({**metas[0], "include": [{"class": "circle", "count": 0}]}))
    with pytest.raises(ValueError, match=r"bad.jsonl:1: include\[0\] needs 'class' .* 'count' \(int >= 1\)"):
        load_metadata(bad)
    bad.write_bytes(good.encode() + '{"prompt": "un caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"bad.jsonl:3: GenEval metadata must be UTF-8"):
        load_metadata(bad)
    assert len(load_metadata(write_jsonl(tmp_path / "ok.jsonl", metas))) == 6
    with pytest.raises(FileNotFoundError, match="metadata file '.*missing.jsonl' does not exist"):
        GenEvalBenchmark(Config(metadata=str(tmp_path / "missing.jsonl")))
    with pytest.raises(ValueError, match="geneval needs --metadata PATH"):
        GenEvalBenchmark(Config())
    with pytest.raises(ValueError, match=r"unknown detector 'yolo' \(--geneval.detector\)"):
        GenEvalBenchmark(Config(metadata=str(tmp_path / "ok.jsonl"), detector="yolo"))
    # A real generator with no scorer chosen says how to choose one.
    bench = GenEvalBenchmark(Config(metadata=str(tmp_path / "ok.jsonl")))
    with pytest.raises(ValueError, match="choose a scorer: --reward remote:URL"):
        bench.run(FlatGenerator(), tmp_path / "out", info={"profile": "sd-turbo"})


@pytest.mark.unit
def test_geneval_mmdet_in_the_main_environment_gives_the_environment_error(tmp_path):
    import rewards
    from evals.geneval_bench import Config, GenEvalBenchmark
    from rewards.geneval_mmdet import GenEvalMMDet

    assert (GenEvalMMDet.name, GenEvalMMDet.differentiable, GenEvalMMDet.resolution) == ("geneval-mmdet", False, None)
    assert GenEvalMMDet.version >= 1 and "reward_env-geneval" in GenEvalMMDet.requires
    pattern = r"needs the 'mmcv' package .*GenEval's own environment.*nox -s reward_env-geneval.*remote:http://127.0.0.1"
    with pytest.raises(RuntimeError, match=pattern):
        rewards.build("geneval-mmdet", {"checkpoint": "/x.pth", "clip": "/clip"})
    meta = write_jsonl(tmp_path / "m.jsonl", shapes_metas())
    with pytest.raises(RuntimeError, match=pattern):
        GenEvalBenchmark(Config(metadata=str(meta), detector="mmdet", option=("checkpoint=/x.pth",)))
    with pytest.raises(RuntimeError, match=r"geneval --reward: reward 'geneval-mmdet' could not be built"):
        GenEvalBenchmark(Config(metadata=str(meta), reward="geneval-mmdet"))


@pytest.mark.slow
def test_geneval_reward_over_http_matches_the_detector_path(tmp_path):
    """``--reward remote:URL`` serving geneval-mmdet: the rules run server-side on metadata sent as JSON prompts.
    A stand-in detector (the Shapes one) replaces Mask2Former, which needs GenEval's environment."""
    from evals.geneval_bench import Config, GenEvalBenchmark, read_results
    from evals.geneval_layout import write_layout
    from harness.serving.server import RewardServer
    from harness.shapes.detect import detect_batch
    from harness.shapes.render import render_batch
    from rewards.geneval_mmdet import GenEvalMMDet

    metas = shapes_metas()
    rng = np.random.default_rng(0)
    images = [render_batch([m] * 3, rng, correct=[True, False, True])[0] for m in metas]
    write_layout(tmp_path / "layout", metas, images)
    direct = GenEvalBenchmark(Config(images=str(tmp_path / "layout"), detector="shapes")).run(None, tmp_path / "a")
    stand_in = GenEvalMMDet.with_detector(lambda x, need_color=None: detect_batch(x))
    with RewardServer(stand_in, port=0).start() as server:
        remote = GenEvalBenchmark(Config(images=str(tmp_path / "layout"), reward=f"remote:{server.url}"))
        assert remote.reward.name == "geneval-mmdet"
        via = remote.run(None, tmp_path / "b")
    assert [r["correct"] for r in read_results(tmp_path / "b" / "results.jsonl")] == \
        [r["correct"] for r in read_results(tmp_path / "a" / "results.jsonl")]
    assert via["scores"] == direct["scores"] and 0 < direct["scores"]["correct_images"] < 1

    # As a training reward: plain prompts looked up in metadata=, partial credit with fraction=true.
    meta_file = write_jsonl(tmp_path / "m.jsonl", metas)
    frac = GenEvalMMDet.with_detector(lambda x, need_color=None: detect_batch(x), metadata=str(meta_file), fraction="true")
    batch = torch.cat(images[4:6])
    prompts = [metas[4]["prompt"]] * 3 + [json.dumps(metas[5])] * 3
    rows = frac.verify(batch, prompts)
    assert frac.score(batch, prompts).tolist() == [r["fraction"] for r in rows]
    assert [r["correct"] for r in rows] == [r["fraction"] == 1.0 for r in rows]
    with pytest.raises(ValueError, match="neither a GenEval metadata JSON object nor in the metadata= file"):
        frac.score(batch[:1], ["a photo of a hexagon"])


@pytest.mark.unit
def test_mmdet_results_are_parsed_and_masked_crops_classified_as_geneval_does():
    from rewards.geneval_mmdet import GenEvalMMDet

    det = GenEvalMMDet.with_detector(None, max_objects=2)
    det.classes = ["cat", "dog"]
    crops = []

    class Clip:
        def encode_image(self, x):
            return x

    det.clip_model, det.device = Clip(), torch.device("cpu")
    det.transform = lambda image: (crops.append(np.asarray(image)), torch.tensor([1.0, 0.0]))[1]
    det._classifier = lambda cls: torch.eye(2, 10)  # every crop -> COLORS[0] = "red"
    image = np.zeros((20, 30, 3), np.uint8)
    image[:, :] = (200, 10, 10)
    mask = np.zeros((20, 30), bool)
    mask[5:10, 5:15] = True
    bbox = [np.array([[4, 4, 16, 12, 0.95], [0, 0, 5, 5, 0.2], [1, 1, 9, 9, 0.5], [2, 2, 8, 8, 0.6]], np.float32),
            np.zeros((0, 5), np.float32)]
    segm = [[mask, mask, mask, mask], []]
    found = det._objects(image, (bbox, segm), cut=0.3, wanted=None)
    assert list(found) == ["cat"] and [d.score for d in found["cat"]] == pytest.approx([0.95, 0.6])  # top 2 above 0.3
    assert found["cat"][0].box == (4.0, 4.0, 16.0, 12.0) and found["cat"][0].color == "red"
    crop = crops[0]
    assert crop.shape == (8, 12, 3)  # cropped to the box
    assert (crop[1:6, 1:11] == (200, 10, 10)).all() and (crop[0, 0] == (153, 153, 153)).all()  # mask on #999
    assert det._objects(image, {"ins_results": (bbox, segm)}, 0.3, wanted=set())["cat"][0].color is None


FAKE_MMDET = """
__version__ = "2.27.0"
"""
FAKE_MMDET_APIS = """
import numpy as np

class Model:
    CLASSES = ("cat", "dog")

def init_detector(config, checkpoint, device="cpu"):
    assert config.endswith("mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.py") and checkpoint.endswith(".pth")
    return Model()

def inference_detector(model, imgs):
    out = []
    for bgr in imgs:  # BGR uint8, as mmdet 2.x expects arrays; a "cat" is a strongly red (RGB) region
        mask = (bgr[..., 2] > 150) & (bgr[..., 0] < 100)
        ys, xs = np.nonzero(mask)
        cats = np.zeros((0, 5), np.float32) if not len(xs) else np.array(
            [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1, 0.95]], np.float32)
        out.append(([cats, np.zeros((0, 5), np.float32)], [[mask] if len(xs) else [], []]))
    return out
"""
FAKE_OPEN_CLIP = """
import numpy as np
import torch

COLORS = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white"]
RGB = torch.tensor([[220, 40, 40], [255, 150, 0], [240, 220, 0], [40, 170, 60], [40, 80, 220], [128, 0, 128],
                    [255, 150, 200], [120, 70, 20], [10, 10, 10], [250, 250, 250]], dtype=torch.float32)

class Model:
    def eval(self):
        return self
    def requires_grad_(self, flag):
        return self
    def encode_text(self, tokens):
        return torch.nn.functional.one_hot(tokens, 10).float()
    def encode_image(self, x):  # x: (B, 3) mean colour of the non-#999 pixels -> nearest colour, one-hot
        return torch.nn.functional.one_hot(torch.cdist(x, RGB).argmin(1), 10).float()

def transform(image):
    a = np.asarray(image).reshape(-1, 3).astype(np.float32)
    keep = a[(a != 153).any(axis=1)]
    return torch.from_numpy(keep.mean(axis=0) if len(keep) else a.mean(axis=0))

def create_model_and_transforms(arch, pretrained=None, device=None, cache_dir=None):
    assert arch == "ViT-L-14" and pretrained == "openai" and cache_dir
    return Model(), None, transform

def get_tokenizer(arch):
    return lambda texts: torch.tensor([next(i for i, c in enumerate(COLORS) if f" {c}" in t) for t in texts])
"""


@pytest.mark.unit
def test_geneval_mmdet_code_path_with_stand_in_packages(tmp_path, monkeypatch):
    """The mmdet/open_clip calls of GenEvalMMDet against stand-in packages (the real ones need GenEval's CUDA env):
    imports, config resolution, BGR input, mask compositing, the template classifier and the rules."""
    from rewards.geneval_mmdet import GenEvalMMDet

    site = tmp_path / "site"
    (site / "mmdet" / "apis").mkdir(parents=True)
    (site / "mmcv").mkdir()
    (site / "mmcv" / "__init__.py").write_text("")
    (site / "mmdet" / "__init__.py").write_text(FAKE_MMDET)
    (site / "mmdet" / "apis" / "__init__.py").write_text(FAKE_MMDET_APIS)
    (site / "open_clip.py").write_text(FAKE_OPEN_CLIP)
    (site / "configs" / "mask2former").mkdir(parents=True)
    (site / "configs" / "mask2former" / "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.py").write_text("")
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "ViT-L-14.pt").write_bytes(b"x")
    (tmp_path / "m2f.pth").write_bytes(b"x")
    monkeypatch.syspath_prepend(str(site))
    for name in ("mmcv", "mmdet", "mmdet.apis", "open_clip"):
        monkeypatch.delitem(sys.modules, name, raising=False)

    with pytest.raises(FileNotFoundError, match="needs checkpoint="):
        GenEvalMMDet(clip=str(tmp_path / "clip"))
    reward = GenEvalMMDet(checkpoint=str(tmp_path / "m2f.pth"), clip=str(tmp_path / "clip"), device="cpu")
    images = torch.full((3, 3, 32, 32), 0.5)
    images[0, :, 4:12, 6:20] = torch.tensor([220, 40, 40]).view(3, 1, 1) / 255  # a red "cat"
    images[1, :, 10:20, 10:20] = torch.tensor([40, 80, 220]).view(3, 1, 1) / 255  # blue: not a cat
    dets = reward.detect(images)
    assert dets[1] == {} and dets[2] == {}
    (cat,) = dets[0]["cat"]
    assert cat.box == (6.0, 4.0, 20.0, 12.0) and cat.color == "red" and cat.score == pytest.approx(0.95)
    red_cat = {"tag": "colors", "include": [{"class": "cat", "count": 1, "color": "red"}], "prompt": "a red cat"}
    blue_cat = {**red_cat, "include": [{"class": "cat", "count": 1, "color": "blue"}], "prompt": "a blue cat"}
    assert reward.score(images, [json.dumps(red_cat)] * 3).tolist() == [1.0, 0.0, 0.0]
    assert reward.score(images[:1], [json.dumps(blue_cat)]).tolist() == [0.0]
    # GenEval's own class names (evaluation/object_names.txt) replace the detector's; unknown classes are errors.
    with pytest.raises(ValueError, match=r"class\(es\) \['kitty'\] are not among the detector's class names"):
        reward.score(images[:1], [json.dumps({**red_cat, "include": [{"class": "kitty", "count": 1}]})])
    (tmp_path / "names.txt").write_text("kitty\ndoggo\n")
    renamed = GenEvalMMDet(checkpoint=str(tmp_path / "m2f.pth"), clip=str(tmp_path / "clip"), device="cpu",
                           object_names=str(tmp_path / "names.txt"))
    assert list(renamed.detect(images[:1])[0]) == ["kitty"]
    for name in ("mmcv", "mmdet", "mmdet.apis", "open_clip"):
        sys.modules.pop(name, None)


# ---------------------------------------------------------------------------------------------------
# HPDv3
# ---------------------------------------------------------------------------------------------------

@pytest.mark.unit
def test_hpdv3_prompt_folder_with_a_fake_reward(tmp_path, fake_rewards):
    from evals.hpdv3 import Config, HPDv3Benchmark

    root = tmp_path / "hpdv3"
    (root / "Animals").mkdir(parents=True)
    for i, text in enumerate(["a cat on a sofa", "a dog in the snow", "an owl at night"]):
        (root / "Animals" / f"{i:04d}.txt").write_text(text + "\n")
    (root / "Animals" / "0000.png").write_bytes(b"ignored")
    (root / "Food.txt").write_text("a bowl of ramen\n\na slice of pizza\n")
    (root / "Design.json").write_text(json.dumps(["a poster", {"prompt": "a logo"}, {"caption": "a chair"}, "a font"]))
    (root / "_notes.txt").write_text("skipped")

    bench = HPDv3Benchmark(Config(prompts=str(root), reward="test-brightness", images_per_prompt=2))
    assert {c: len(p) for c, p in bench.prompts.items()} == {"Animals": 3, "Design": 4, "Food": 2}
    gen = FlatGenerator()
    summary = bench.run(gen, tmp_path / "out", batch_size=3)
    rows = [json.loads(x) for x in (tmp_path / "out" / "scores.jsonl").read_text().splitlines()]
    assert len(rows) == 18 and rows[0]["seed"] == 10_000_000 and rows[1]["seed"] == 10_000_001
    cats = summary["scores"]["categories"]
    for category in ("Animals", "Design", "Food"):
        values = [r["score"] for r in rows if r["category"] == category]
        assert cats[category]["mean"] == pytest.approx(np.mean(values)) and cats[category]["n"] == len(values)
        assert cats[category]["std"] == pytest.approx(np.std(values))
    # Overall is the unweighted mean of the category means (not the pooled image mean: counts differ).
    assert summary["scores"]["overall"] == pytest.approx(np.mean([c["mean"] for c in cats.values()]))
    assert summary["scores"]["overall"] != pytest.approx(np.mean([r["score"] for r in rows]))
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["reward"] == "test-brightness"

    # Subsets, a single file with categories, and the errors.
    only = HPDv3Benchmark(Config(prompts=str(root), reward="test-half", categories=("Food",), per_category=1))
    assert only.prompts == {"Food": ["a bowl of ramen"]}
    table = tmp_path / "prompts.jsonl"
    table.write_text(json.dumps({"prompt": "p1", "category": "Arts"}) + "\n" + json.dumps({"prompt": "p2", "category": "Food"}))
    assert HPDv3Benchmark(Config(prompts=str(table), reward="test-half")).prompts == {"Arts": ["p1"], "Food": ["p2"]}
    with pytest.raises(ValueError, match=r"categories \['Plants'\] are not in"):
        HPDv3Benchmark(Config(prompts=str(root), reward="test-half", categories=("Plants",)))
    with pytest.raises(FileNotFoundError, match="HPDv3 prompt folder '.*nowhere' does not exist"):
        HPDv3Benchmark(Config(prompts=str(tmp_path / "nowhere"), reward="test-half"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no HPDv3 categories"):
        HPDv3Benchmark(Config(prompts=str(tmp_path / "empty"), reward="test-half"))
    with pytest.raises(RuntimeError, match=r"hpdv3: reward 'hpsv3' could not be built: .*remote:"):
        HPDv3Benchmark(Config(prompts=str(root)))  # the default hpsv3 lives in its own environment
    with pytest.raises(ValueError, match=r"hpdv3: reward 'hps3' could not be built: unknown reward 'hps3'"):
        HPDv3Benchmark(Config(prompts=str(root), reward="hps3"))


# ---------------------------------------------------------------------------------------------------
# Pick-a-Pic v2 test and Parti-Prompts
# ---------------------------------------------------------------------------------------------------

@pytest.mark.unit
def test_pickapic_parti_columns_with_fake_rewards(tmp_path, fake_rewards):
    from evals.pickapic import Config, PickapicPartiBenchmark

    pickapic = tmp_path / "pickapic.txt"
    pickapic.write_text("a red bicycle\na castle at dusk\na bowl of fruit\n")
    parti = tmp_path / "PartiPrompts.tsv"
    parti.write_text("Prompt\tCategory\tChallenge\tNote\nbond\tAbstract\tBasic\t\nsalmon in a river\tAnimals\tBasic\t\n")
    cfg = Config(pickapic=str(pickapic), parti=str(parti), pickscore="test-half", aesthetic="test-brightness",
                 imagereward="test-tenth", hpsv2="test-tenth")
    summary = PickapicPartiBenchmark(cfg).run(FlatGenerator(), tmp_path / "out", batch_size=2)
    for key, n in (("pickapic", 3), ("parti", 2)):
        scores = summary["scores"][key]
        assert scores["PS"] == pytest.approx(0.5) and scores["IR"] == pytest.approx(1.0)  # ImageReward x10
        assert scores["HPSv2"] == pytest.approx(10.0)                                      # HPSv2 x100
        assert summary["stats"][key]["AES"]["n"] == n and summary["prompts"][key] == n
    rows = [json.loads(x) for x in (tmp_path / "out" / "scores.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows if r["set"] == "parti"] == ["bond", "salmon in a river"]
    assert summary["scores"]["pickapic"]["AES"] == pytest.approx(np.mean([r["AES"] for r in rows if r["set"] == "pickapic"]))
    assert summary["columns"]["IR"] == {"title": "ImageReward x10", "reward": "test-tenth", "requested": "test-tenth",
                                        "version": 1, "scale": 10.0}

    # Dropping columns and sets, overriding a scale.
    only = PickapicPartiBenchmark(Config(parti=str(parti), pickscore="test-half", aesthetic="", imagereward="",
                                         hpsv2="", scales=("PS=100",)))
    out = only.run(FlatGenerator(), tmp_path / "only")
    assert out["scores"] == {"parti": {"PS": pytest.approx(50.0)}}
    # Clear errors: missing file, unknown reward, a reward from another environment, nothing to do.
    with pytest.raises(FileNotFoundError, match=r"--parti \(Parti-Prompts\): prompt file '.*nope.tsv' does not exist"):
        PickapicPartiBenchmark(Config(parti=str(tmp_path / "nope.tsv"), pickscore="test-half", aesthetic="",
                                      imagereward="", hpsv2=""))
    with pytest.raises(ValueError, match=r"column AES .* reward 'aesthetik' could not be built: unknown reward"):
        PickapicPartiBenchmark(Config(pickapic=str(pickapic), pickscore="test-half", aesthetic="aesthetik"))
    with pytest.raises(RuntimeError, match=r"column IR \(ImageReward x10; .*--imagereward ''.*own environment"):
        PickapicPartiBenchmark(Config(pickapic=str(pickapic), pickscore="test-half", aesthetic="test-half"))
    with pytest.raises(ValueError, match="needs --pickapic FILE and/or --parti FILE"):
        PickapicPartiBenchmark(Config())
    (tmp_path / "bad.tsv").write_text("text_a\tb\nx\ty\n")
    with pytest.raises(ValueError, match="has no prompt column"):
        PickapicPartiBenchmark(Config(parti=str(tmp_path / "bad.tsv"), pickscore="test-half"))


# ---------------------------------------------------------------------------------------------------
# Loading a run's weights and the evaluate command
# ---------------------------------------------------------------------------------------------------

@pytest.mark.unit
def test_load_weights_restores_the_adapter_and_the_checkpoint(tmp_path):
    from evals.bench import load_weights
    from harness.generator import tiny_sd

    trained = tiny_sd(seed=0, lora_rank=4)
    with torch.no_grad():
        for p in trained.trainable():
            p.add_(0.05 * torch.randn_like(p))
    trained.save_adapter(tmp_path / "adapter")
    fresh = tiny_sd(seed=0, lora_rank=4)
    assert load_weights(fresh, tmp_path).endswith("pytorch_lora_weights.safetensors")
    for name, value in trained.trainable_state().items():
        assert torch.equal(fresh.trainable_state()[name], value), name
    for f in (tmp_path / "adapter").iterdir():
        f.unlink()
    torch.save({"trainable": trained.trainable_state()}, tmp_path / "checkpoint.pt")
    again = tiny_sd(seed=0, lora_rank=4)
    assert load_weights(again, tmp_path).endswith("checkpoint.pt")
    assert all(torch.equal(again.trainable_state()[k], v) for k, v in trained.trainable_state().items())
    (tmp_path / "checkpoint.pt").unlink()
    with pytest.raises(FileNotFoundError, match="neither adapter/ weights nor checkpoint.pt"):
        load_weights(again, tmp_path)


@pytest.fixture
def small_m(monkeypatch):
    import dataclasses

    import methods.drpo as drpo

    monkeypatch.setattr(drpo, "Config", dataclasses.make_dataclass(
        "Config", [("m", int, dataclasses.field(default=2))], bases=(drpo.Config,), frozen=True))


@pytest.mark.slow
def test_evaluate_command_on_a_tiny_run(tmp_path, small_m, capsys):
    from harness.cli import main
    from harness.run import run
    from tests.conftest import tiny_run

    run(tiny_run(tmp_path, run_id="r1"), progress=False)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a red cat\na photo of a blue car\n")
    common = ["--run", "r1", "--out", str(tmp_path), "--batch-size", "3", "--pickapic", str(prompts),
              "--pickscore", "jpeg", "--aesthetic", "colorfulness", "--imagereward", "", "--hpsv2", ""]
    assert main(["evaluate", "pickapic-parti", *common]) == 0
    trained = json.loads((tmp_path / "runs" / "r1" / "pickapic-parti" / "summary.json").read_text())
    assert trained["generator"] == "trained" and trained["weights"].endswith("pytorch_lora_weights.safetensors")
    assert set(trained["scores"]["pickapic"]) == {"PS", "AES"} and trained["run_id"] == "r1"
    assert main(["evaluate", "pickapic-parti", *common, "--base"]) == 0
    base = json.loads((tmp_path / "runs" / "r1" / "pickapic-parti-base" / "summary.json").read_text())
    assert base["generator"] == "base" and base["weights"] == ""

    meta = write_jsonl(tmp_path / "shapes.jsonl", shapes_metas())
    assert main(["evaluate", "geneval", "--run", "r1", "--out", str(tmp_path), "--metadata", str(meta),
                 "--detector", "shapes", "--limit", "2", "--samples", "2", "--no-grid"]) == 0
    folder = tmp_path / "runs" / "r1" / "geneval"
    assert sorted(os.listdir(folder / "00001" / "samples")) == ["00000.png", "00001.png"]
    assert json.loads((folder / "summary.json").read_text())["counts"]["images"] == 4
    capsys.readouterr()
    assert main(["evaluate", "genevl", "--run", "r1"]) == 2
    assert "did you mean 'geneval'" in capsys.readouterr().err
    assert main(["evaluate", "heldout", "--run", "r1"]) == 2
    assert main(["evaluate", "geneval", "--run", "nope", "--out", str(tmp_path), "--metadata", str(meta)]) == 2
    assert "no run 'nope'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# Reward environments (nox) and the paper's table
# ---------------------------------------------------------------------------------------------------

@pytest.mark.unit
def test_nox_lists_the_reward_environments_and_they_fail_early(tmp_path):
    nox = Path(sys.executable).parent / "nox"
    if not nox.exists():
        pytest.skip("nox is not installed beside this interpreter")
    out = subprocess.run([str(nox), "--list", "-f", str(ROOT / "noxfile.py")], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    for env in ("hpsv3", "geneval", "imagereward", "hpsv2"):
        assert f"reward_env-{env} ->" in out.stdout
    for session in ("tests", "reproduce_table2", "lint"):
        assert session in out.stdout

    import noxfile

    with pytest.raises(ValueError, match=r"reward_env-hpsv3 needs --option checkpoint=PATH.*e.g. nox -s reward_env-hpsv3"):
        noxfile.serve_args("hpsv3", ["--port", "8001"])
    ckpt = tmp_path / "HPSv3.safetensors"
    ckpt.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"needs --option qwen=PATH or --option config=PATH"):
        noxfile.serve_args("hpsv3", ["--option", f"checkpoint={ckpt}"])
    with pytest.raises(ValueError, match=r"--option qwen=/no/such/dir does not exist"):
        noxfile.serve_args("hpsv3", [f"--option=checkpoint={ckpt}", "--option", "qwen=/no/such/dir"])
    args, _ = noxfile.serve_args("hpsv3", ["--port", "8001", "--option", f"checkpoint={ckpt}",
                                             f"--option=qwen={tmp_path}", "--token", "T"])
    assert args == ["--port", "8001", "--option", f"checkpoint={ckpt}", "--option", f"qwen={tmp_path}", "--token", "T"]
    with pytest.raises(ValueError, match=r"needs --option med_config=PATH"):
        noxfile.serve_args("imagereward", ["--option", f"checkpoint={ckpt}"])
    with pytest.raises(ValueError, match=r"local mmdetection 2.x checkout"):
        noxfile.serve_args("geneval", ["--option", f"checkpoint={ckpt}", "--option", f"clip={tmp_path}"])
    with pytest.raises(ValueError, match=r"is not an mmdetection 2.x checkout"):
        noxfile.serve_args("geneval", ["--mmdet-src", str(tmp_path), "--option", f"checkpoint={ckpt}",
                                       "--option", f"clip={tmp_path}"])


@pytest.mark.unit
def test_table2_passes_the_model_and_prompt_files_to_the_paper_sections(tmp_path):
    import tyro

    from harness.reporting.reproduce import Table2Config, check_real, plan
    from harness.sections import PAPER_METHODS, SECTIONS
    from harness.store import Store

    train = tmp_path / "train.txt"
    train.write_text("a cat\n")
    argv = ["--profile", "sd-turbo", "--model", "/models/sd-turbo", "--features-path", str(train), "--prompts",
            str(train), "--pickapic", str(train), "--reward-options", "pickscore.model=/m/ps", "--seeds", "0", "1",
            "--columns", "IR=", "HPSv2="]
    cfg = tyro.cli(Table2Config, args=argv)
    jobs = plan(SECTIONS["sd-turbo"], cfg, Store(tmp_path))
    assert sorted({j.run_cfg.method for j in jobs}) == sorted(PAPER_METHODS) and len(jobs) == 12
    run_cfg = jobs[0].run_cfg
    assert (run_cfg.profile, run_cfg.model, run_cfg.prompts, run_cfg.eval_split) == (
        "sd-turbo", "/models/sd-turbo", str(train), str(train))
    assert run_cfg.reward == "pickscore" and run_cfg.k == 24 and run_cfg.updates == 1000 and run_cfg.lora_rank == 16
    assert run_cfg.reward_options == ("pickscore.model=/m/ps",)
    assert {j.method_cfg.m for j in jobs if j.run_cfg.method == "drpo"} == {8}
    xl = plan(SECTIONS["sdxl-turbo"], tyro.cli(Table2Config, args=["--profile", "sdxl-turbo", "--model", "/x"]),
              Store(tmp_path))
    assert xl[0].run_cfg.k == 16 and xl[0].run_cfg.updates == 5000 and xl[0].run_cfg.model == "/x"
    # The tiny table's run configs are untouched by the new fields (stored runs keep their keys).
    tiny = plan(SECTIONS["tiny"], Table2Config(profile="tiny", seeds=(0,)), Store(tmp_path))
    assert tiny[0].run_cfg.model == "" and tiny[0].run_cfg.prompts == "train"
    with pytest.raises(ValueError, match="needs --model and --prompts"):
        check_real(Table2Config(profile="sd-turbo"))
    with pytest.raises(ValueError, match="needs --pickapic FILE and/or --parti FILE"):
        check_real(Table2Config(profile="sd-turbo", model="/m", prompts=str(train)))
    with pytest.raises(ValueError, match="--features-path"):
        check_real(Table2Config(profile="sd-turbo", model="/m", prompts=str(train), pickapic=str(train)))


@pytest.mark.unit
def test_paper_table_puts_ours_beside_the_papers():
    from harness.reporting.table2 import paper_table

    def summary(ps, aes):
        return {"scores": {"pickapic": {"PS": ps, "AES": aes}, "parti": {"PS": ps - 1, "AES": aes}}}

    runs = [("drpo", summary(23.0, 6.4)), ("drpo", summary(23.2, 6.6)), ("draft", summary(24.0, 6.8))]
    lines, records = paper_table("sd-turbo", {"SD-Turbo": (summary(21.9, 6.05), runs)})
    text = "\n".join(lines)
    assert "| method | steps | reward grad. | Pick-a-Pic PS | Pick-a-Pic AES | Parti PS | Parti AES |" in text
    drpo = next(line for line in lines if line.startswith("| DrPO "))
    assert "23.10 ± " in drpo and "(23.49)" in drpo and "(6.485)" in drpo and "(22.99)" in drpo
    assert next(line for line in lines if line.startswith("| SD-Turbo (base)")).count("(21.88)") == 1
    assert next(line for line in lines if line.startswith("| SD1.5 ")).startswith("| SD1.5 | 50 | – | – (20.79)")
    # long format (one row per section x method x metric): the benchmark set is the split, the column the metric
    rec = next(r for r in records if r["method"] == "drpo" and r["split"] == "parti" and r["metric"] == "PS")
    assert rec["value"] == pytest.approx(22.1) and rec["paper"] == 22.99 and rec["seeds"] == 2
