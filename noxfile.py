"""nox sessions. The virtualenvs are reused between runs (``nox.options.reuse_venv``).

    nox -s tests                  the whole test suite on CPU (unit, smoke, slow tiers)
    nox -s faults                 the fault-injection suite alone (kills, full disk, bad input, server load)
    nox -s trackers               every --log-with tracker, each record read back with the tracker's own API
    nox -s reproduce_table2       the main comparison on the embedded default; `-- --profile tiny` for the toy table
    nox -s tune_table2            re-run the equal-effort tuning the main comparison reads (harness/tuned/shapes2.json)
    nox -s limitations            the paper's three limitations, rewritten from their committed record (seconds);
                                  `-- --scale full` re-runs the real study (~2 h), `-- --scale smoke` the CI-sized plan
    nox -s plots                  redraw every figure from stored results
    nox -s lint                   ruff
    nox -s paper_smoke            every method at full SD-Turbo size with random weights on CPU, checkpoint, resume and
                                  the adapter in a stock diffusers pipeline (results/compute/paper_smoke.md; tens of
                                  minutes, not part of `tests`)
    nox -s gpu_check              the prepared one-GPU check (results/compute/gpu_check.md); `-- --dry-run` on CPU
    nox -s reward_env-hpsv3       an isolated env per reward package (hpsv3, geneval, imagereward, hpsv2) that runs
                                  `driftbench serve-reward` for remote:URL; see the section at the end of this file
    nox -s reward_envs_check      build every reward env and check it with tiny random models (no weights, no GPU)
"""

import json
import os
import subprocess
import sys
import time

import nox

nox.options.reuse_venv = "yes"
nox.options.sessions = ["tests"]

# The CPU build of torch lies on these machines' disks; on a GPU machine PyPI's default wheel is CUDA.
# DRIFTBENCH_TORCH overrides the requirement (e.g. "torch==2.5.1"), or "skip" keeps what is installed.
TORCH = os.environ.get("DRIFTBENCH_TORCH", "torch==2.13.0")


def install(session: nox.Session, *extras: str) -> None:
    if TORCH != "skip":
        session.install(TORCH)
    target = "." + (f"[{','.join(extras)}]" if extras else "")
    session.install("-e", target)


@nox.session
def tests(session: nox.Session) -> None:
    """Every test tier that runs on CPU; GPU tests skip themselves without CUDA. Two pytest workers, one test file
    each at a time (``--dist loadfile``: a file's tests share its fixtures, ports and database): serially the suite
    left one core idle most of the time (14.6 min wall against 10.7 min of CPU for 778 tests)."""
    install(session, "test")
    session.run("pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--dist", "loadfile", *session.posargs)


@nox.session
def faults(session: nox.Session) -> None:
    """tests/test_faults.py, test_faults_more.py and test_faults_trust.py alone: kill -9 at every phase of a run,
    SIGTERM, a full disk, locks, secrets, 60 bad inputs, the reward server under 100 concurrent clients, planted
    pickles, secrets in every sink, damaged journals (also part of `tests`)."""
    install(session, "test")
    session.run("pytest", "-q", "-p", "no:cacheprovider", "tests/test_faults.py", "tests/test_faults_more.py",
                "tests/test_faults_trust.py", *session.posargs)


@nox.session
def trackers(session: nox.Session) -> None:
    """Every --log-with tracker (tensorboard, wandb, mlflow, trackio) in a single process, each record read back with
    the tracker's own API: tests/test_trackers.py with the `trackers` extra installed (in `tests` they skip)."""
    install(session, "test", "trackers")
    session.run("pytest", "-q", "-p", "no:cacheprovider", "tests/test_trackers.py", *session.posargs)


@nox.session
def reproduce_table2(session: nox.Session) -> None:
    """Run (or resume) the main comparison on the Shapes world's edition 2 and write results/table2-shapes2.md and
    .csv (`-- --profile shapes` for edition 1's results/table2.md)."""
    install(session)
    session.run("python", "-m", "harness", "table2", *session.posargs)


@nox.session
def tune_table2(session: nox.Session) -> None:
    """Re-run the equal-effort tuning of every method of the main table (resumable) and rewrite
    harness/tuned/shapes2.json, which reproduce_table2 reads (`-- --profile shapes` for edition 1's)."""
    install(session)
    # The committed studies (results/tune2/studies/) ran before validation scored only the selection reward, so their
    # base runs have other keys and a study refuses to resume them: a re-tuning writes its own results root (its
    # trials compute what the committed ones did: only validation's proxy scores, which nothing read, are gone).
    out = [] if any(a == "--out" or a.startswith("--out=") for a in session.posargs) else ["--out", "results/retune"]
    session.run("python", "-m", "harness", "tune", *out, *session.posargs)


@nox.session
def limitations(session: nox.Session) -> None:
    """The paper's three limitations. Without arguments results/limitations.md and its figures are rewritten from the
    committed record of the full study (`--scale full --source record`: seconds, nothing trained); `-- --scale full`
    re-runs that study on the second Shapes edition (145 runs, about 2 h on two cores; resumable, stored runs reused)
    and writes a new record; `-- --scale smoke` the CI-sized plan (a minute or two, results/limitations-smoke.md)."""
    install(session)
    session.run("python", "-m", "harness", "limitations", *(session.posargs or ["--scale", "full", "--source", "record"]))


@nox.session
def plots(session: nox.Session) -> None:
    """Redraw every figure from the stored results into results/plots/ (no training)."""
    install(session)
    session.run("python", "-m", "harness", "plots", *session.posargs)


@nox.session
def paper_smoke(session: nox.Session) -> None:
    """Every method for one update at full SD-Turbo size with random weights on CPU (PickScore as a full-size CLIP
    ViT-H/14, HPSv3 as a reduced-depth Qwen2-VL-7B), then checkpoint, resume and the adapter loaded into a stock
    diffusers pipeline; writes results/compute/paper_smoke.json and .md. Arguments go to the module, e.g.
    `-- --profile sd-turbo-random` (512 px; the default run is 256 px, see README)."""
    install(session)
    args = list(session.posargs) or ["--profile", "sd-turbo-random-256"]
    session.run("python", "-m", "harness.compute.paper_smoke", *args)


@nox.session
def gpu_check(session: nox.Session) -> None:
    """The prepared one-GPU check (HPSv3 timing configuration at full size in bf16, profile-step of DrPO and DRaFT,
    the ranking economies, Shapes on CUDA against CPU); `-- --dry-run` runs it at toy size on CPU. On a GPU machine
    with a registry set DRIFTBENCH_TORCH to a CUDA build (or skip); the lent machine without one runs
    .ci/gpu-check-device.sh instead (wheels from .ci/gpu-wheels.txt)."""
    install(session)
    session.run("python", "-m", "harness.compute.gpu_check", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "harness", "methods", "rewards", "evals", "tests", "noxfile.py")


# -- Reward environments ------------------------------------------------------------------------------------
# Each reward package below pins dependencies the main environment cannot take (transformers 4.45.2, timm 0.6.13,
# torchvision, mmcv-full 1.7 with CUDA ops), so each gets its own virtualenv here: the package with its working
# pins, driftbench itself with --no-deps plus the few packages `driftbench serve-reward` imports, and then the
# server, with the session's arguments passed through (host, port, token, --option KEY=VALUE):
#
#     nox -s reward_env-hpsv3 -- --port 8001 --option checkpoint=/data/HPSv3.safetensors --option qwen=/data/Qwen2-VL-7B-Instruct
#     nox -s reward_env-geneval -- --mmdet-src /src/mmdetection-2.x --port 8002 \
#         --option checkpoint=/data/mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.pth --option clip=/data/clip \
#         --option object_names=/src/geneval/evaluation/object_names.txt
#
# and the main environment scores with the reward `remote:http://127.0.0.1:8001`. Every session checks its
# required local files before installing anything. The main environment never installs these packages.
# DRIFTBENCH_<ENV>_PYTHON (e.g. DRIFTBENCH_GENEVAL_PYTHON=3.10) picks the interpreter (default: nox's own; driftbench
# needs Python >= 3.10); DRIFTBENCH_GENEVAL_TORCH overrides GenEval's torch pair (default torch 2.1.2 + cu121 wheels).

SERVER_PACKAGES = ("tyro", "pillow", "numpy")
"""What `driftbench serve-reward` imports besides torch and numpy (driftbench is installed with --no-deps)."""

REWARD_ENVS = {
    "hpsv3": {
        "reward": "hpsv3",
        # hpsv3 1.0.0 pins transformers 4.45.2 and imports torchvision at import time: the CPU-usable pair is torch
        # 2.14.1 + torchvision 0.29.1; diffusers > 0.36 breaks with transformers 4.45.2; matplotlib and tensorboard
        # are imported but undeclared; trl 0.12.2 is what the resolver settles on for transformers 4.45.2.
        "packages": ("torch==2.14.1", "torchvision==0.29.1", "hpsv3==1.0.0", "transformers==4.45.2", "diffusers<=0.36",
                     "trl==0.12.2", "matplotlib", "tensorboard"),
        "required": (("checkpoint",), ("qwen", "config")),
        "example": "--option checkpoint=/data/HPSv3.safetensors --option qwen=/data/Qwen2-VL-7B-Instruct",
    },
    "imagereward": {
        "reward": "imagereward",
        # image-reward 1.5 pins timm 0.6.13 and fairscale 0.4.13; its BLIP code imports helpers that newer
        # transformers moved, so transformers stays at 4.45.2.
        # It imports OpenAI's `clip` without declaring it: clip-anytorch is that package on PyPI. Its
        # `from pkg_resources import packaging` fails on setuptools 70 and on >= 82 (no pkg_resources), and torch
        # 2.14.1 needs setuptools >= 77.0.3: 77 to 81 serve both. An unpinned diffusers (0.39) breaks against
        # transformers 4.45.2 at import, as in the hpsv3 environment.
        "packages": ("torch==2.14.1", "torchvision==0.29.1", "image-reward==1.5", "timm==0.6.13", "fairscale==0.4.13",
                     "transformers==4.45.2", "diffusers<=0.36", "clip-anytorch==2.6.0", "setuptools<82"),
        "required": (("checkpoint",), ("med_config",)),
        "example": "--option checkpoint=/data/ImageReward.pt --option med_config=/data/med_config.json",
    },
    "hpsv2": {
        "reward": "hpsv2",
        # hpsv2 1.2.0 pins protobuf<4, pytest==7.2.0 and pytest-split==0.8.0 itself (harmless in its own venv). Its
        # wheel lacks OpenCLIP's BPE vocabulary, without which its tokenizer fails at import: the session copies
        # bpe_simple_vocab_16e6.txt.gz from the open-clip-torch wheel (VOCAB_FROM) into the package.
        "packages": ("torch==2.14.1", "torchvision==0.29.1", "hpsv2==1.2.0"),
        "required": (("checkpoint",),),
        "example": "--option checkpoint=/data/HPS_v2.1_compressed.pt",
    },
    "geneval": {
        "reward": "geneval-mmdet",
        # GenEval's stack (djghosh13/geneval environment.yml and its issues): mmdet 2.x from source (the configs are
        # not in the wheels), mmcv-full 1.7 compiled with its CUDA ops against the installed torch, open_clip 2.20
        # and clip-benchmark 1.4 (so upstream's evaluate_images.py also runs here); numpy < 2 for the 1.x-era builds.
        "packages": (os.environ.get("DRIFTBENCH_GENEVAL_TORCH", "torch==2.1.2 torchvision==0.16.2").split()
                     + ["numpy<2", "setuptools<70", "wheel", "yapf==0.40.1"]),
        "after": ("open-clip-torch==2.20.0", "clip-benchmark==1.4.0", "pycocotools", "pandas"),
        "required": (("checkpoint",), ("clip",)),
        "pins": ("torch==2.1.2 torchvision==0.16.2 mmcv-full==1.7.2 (CUDA ops) mmdet 2.x (source) open-clip-torch==2.20.0 "
                 "clip-benchmark==1.4.0 numpy<2"),
        "example": ("--option checkpoint=/data/mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.pth "
                    "--option clip=/data/clip (a folder holding OpenAI's ViT-L-14.pt) "
                    "--option object_names=/src/geneval/evaluation/object_names.txt"),
    },
}
MMDET_CONFIG = "configs/mask2former/mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.py"
VOCAB_FROM = "open-clip-torch==2.20.0"
"""The wheel whose open_clip/bpe_simple_vocab_16e6.txt.gz the hpsv2 environment borrows."""
CHECK = "--check"
"""`nox -s reward_env-NAME -- --check`: build the environment and run `python -m rewards.envcheck NAME` instead of
the server (tiny random models written in code, the real package classes, a server started and asked /health)."""


def serve_args(env: str, posargs) -> tuple[list, dict]:
    """Split a reward_env session's arguments into serve-reward's and the session's own (``--mmdet-src``), and
    check the required ``--option KEY=PATH`` entries name existing files; raises ValueError saying what is missing."""
    spec, args, own, options = REWARD_ENVS[env], [], {}, {}
    items = list(posargs)
    i = 0
    while i < len(items):
        item = items[i]
        if item in ("--mmdet-src", "--option") and i + 1 < len(items):
            value, i = items[i + 1], i + 2
        elif item.startswith(("--mmdet-src=", "--option=")):
            item, value = item.split("=", 1)
            i += 1
        else:
            args.append(item)
            i += 1
            continue
        if item == "--mmdet-src":
            own["mmdet_src"] = value
        else:
            key, eq, path = value.partition("=")
            if not (eq and key):
                raise ValueError(f"bad --option '{value}'; expected KEY=VALUE")
            options[key] = path
            args += ["--option", value]
    for group in spec["required"]:
        given = [k for k in group if k in options]
        if not given:
            raise ValueError(f"nox -s reward_env-{env} needs --option {' or --option '.join(k + '=PATH' for k in group)} "
                             f"(local files only), e.g. nox -s reward_env-{env} -- --port 8000 {spec['example']}")
        for key in given:
            if not os.path.exists(os.path.expanduser(options[key])):
                raise ValueError(f"reward_env-{env}: --option {key}={options[key]} does not exist")
    if env == "geneval":
        src = own.get("mmdet_src") or os.environ.get("DRIFTBENCH_MMDET_SRC", "")
        if not src:
            raise ValueError("nox -s reward_env-geneval needs a local mmdetection 2.x checkout (GenEval installs mmdet "
                             "from source): pass --mmdet-src /src/mmdetection (git clone -b v2.27.0 ...) or set "
                             "DRIFTBENCH_MMDET_SRC")
        if not os.path.isfile(os.path.join(src, MMDET_CONFIG)):
            raise ValueError(f"reward_env-geneval: '{src}' is not an mmdetection 2.x checkout (no {MMDET_CONFIG})")
        own["mmdet_src"] = src
    return args, own


def _serve_reward_env(session: nox.Session, env: str) -> None:
    import shutil

    spec = REWARD_ENVS[env]
    check = list(session.posargs) == [CHECK]
    try:
        args, own = ([], {"mmdet_src": os.environ.get("DRIFTBENCH_MMDET_SRC", "")}) if check else serve_args(
            env, session.posargs)
    except ValueError as exc:
        session.error(str(exc))
    if env == "geneval":
        if not (shutil.which("nvcc") or os.environ.get("CUDA_HOME")):
            session.error("reward_env-geneval compiles mmcv-full's CUDA ops and runs Mask2Former on CUDA (as GenEval "
                          "requires): run it on a CUDA machine with nvcc on PATH or CUDA_HOME set")
        session.install(*spec["packages"])
        session.install("--no-build-isolation", "mmcv-full==1.7.2", env={"MMCV_WITH_OPS": "1", "FORCE_CUDA": "1"})
        session.install("--no-build-isolation", "-e", own["mmdet_src"])
        session.install(*spec["after"], *SERVER_PACKAGES)
    else:
        session.install(*spec["packages"], *SERVER_PACKAGES)
    if env == "hpsv2":
        _hpsv2_vocab(session)
    session.install("--no-deps", "-e", ".")
    if check:
        session.run("python", "-m", "rewards.envcheck", env, env={"HF_HUB_OFFLINE": "1"})
    else:
        session.run("driftbench", "serve-reward", spec["reward"], *args, env={"HF_HUB_OFFLINE": "1"})


def _hpsv2_vocab(session: nox.Session) -> None:
    """Copy OpenCLIP's BPE vocabulary, missing from the hpsv2 1.2.0 wheel, into the installed package."""
    script = ("import importlib.util, os, shutil, sys; "
              "src = importlib.util.find_spec('open_clip').submodule_search_locations[0]; "
              "dst = os.path.join(importlib.util.find_spec('hpsv2').submodule_search_locations[0], 'src', 'open_clip'); "
              "shutil.copy(os.path.join(src, 'bpe_simple_vocab_16e6.txt.gz'), dst)")
    session.install("--no-deps", VOCAB_FROM)  # only for the file: open_clip itself is not used here
    session.run("python", "-c", script)
    session.run("python", "-m", "pip", "uninstall", "--quiet", "-y", VOCAB_FROM.split("==")[0])


def _reward_env_session(env: str) -> None:
    def session_fn(session: nox.Session) -> None:
        _serve_reward_env(session, env)

    pins = REWARD_ENVS[env].get("pins") or " ".join(p for p in REWARD_ENVS[env]["packages"] if "==" in p or "<" in p)
    session_fn.__doc__ = (f"Isolated env for reward '{REWARD_ENVS[env]['reward']}' ({pins}); runs "
                          f"`driftbench serve-reward {REWARD_ENVS[env]['reward']}` with the session's arguments.")
    nox.session(name=f"reward_env-{env}", python=os.environ.get(f"DRIFTBENCH_{env.upper()}_PYTHON") or None)(session_fn)


for _env in REWARD_ENVS:
    _reward_env_session(_env)


def system_needs(env: str) -> str:
    """What this machine lacks for a reward environment's check ('' when nothing): GenEval needs CUDA and mmdet 2.x."""
    import shutil

    if env != "geneval":
        return ""
    if not (os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi")):
        return "needs a CUDA GPU (no /dev/nvidia0, no nvidia-smi) to run mmcv's CUDA ops and Mask2Former, as GenEval does"
    if not (shutil.which("nvcc") or os.environ.get("CUDA_HOME")):
        return "needs CUDA (nvcc on PATH or CUDA_HOME) to compile mmcv-full's ops and run Mask2Former, as GenEval does"
    if not os.environ.get("DRIFTBENCH_MMDET_SRC"):
        return "needs DRIFTBENCH_MMDET_SRC, a local mmdetection 2.x checkout (GenEval installs mmdet from source)"
    return ""


@nox.session(python=False)
def reward_envs_check(session: nox.Session) -> None:
    """Build every isolated reward env (or those named after --) and check it without weights: tiny random models
    through the real package classes and the harness's reward, then `serve-reward` and /health. Writes
    results/reward_envs/check.json (per env: passed, failed or skipped with the reason, seconds)."""
    envs = list(session.posargs) or list(REWARD_ENVS)
    unknown = [e for e in envs if e not in REWARD_ENVS]
    if unknown:
        session.error(f"unknown reward env(s) {', '.join(unknown)}; valid: {', '.join(REWARD_ENVS)}")
    results = {}
    for env in envs:
        missing = system_needs(env)
        if missing:
            session.warn(f"reward_envs_check: {env} skipped: {missing}")
            results[env] = {"result": "skipped", "reason": missing}
            continue
        started = time.perf_counter()
        code = subprocess.run([sys.executable, "-m", "nox", "-f", __file__, "-s", f"reward_env-{env}", "--", CHECK]).returncode
        results[env] = {"result": "passed" if code == 0 else "failed", "seconds": round(time.perf_counter() - started, 1)}
        session.log(f"reward_envs_check: {env} {results[env]['result']} in {results[env]['seconds']} s")
    os.makedirs("results/reward_envs", exist_ok=True)
    with open("results/reward_envs/check.json", "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%d"), "results": results}, f, indent=2)
    session.log("reward_envs_check: " + "; ".join(f"{e} {r['result']}" for e, r in results.items()))
    if any(r["result"] == "failed" for r in results.values()):
        session.error("reward_envs_check: some environments failed (see above)")
