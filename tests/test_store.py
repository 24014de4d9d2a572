"""The results store's files: atomically written ones get the same mode as appended ones (the umask's)."""

import os
import stat

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("umask", [0o027])
def test_results_files_respect_the_umask(tmp_path, umask):
    from harness.run import run
    from methods import drpo
    from tests.conftest import tiny_run

    before = os.umask(umask)
    try:
        run(tiny_run(tmp_path, run_id="modes", updates=1, eval_at=(1.0,), eval_prompt_limit=1, checkpoint_every=1,
                     count_flops=False), drpo.Config(m=2), progress=False)
    finally:
        os.umask(before)
    run_dir = tmp_path / "runs" / "modes"
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in run_dir.iterdir() if p.is_file()}
    assert {"manifest.json", "summary.json", "checkpoint.pt", "metrics.jsonl"} <= set(modes)
    assert set(modes.values()) == {0o666 & ~umask}, modes
