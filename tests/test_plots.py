"""Figures are drawn from stored runs only: reward curves, same-noise sample grids, ablation bars, the index."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.conftest import tiny_run

pytestmark = pytest.mark.slow


def test_plots_from_stored_runs(tmp_path):
    from harness.reporting.plots import PlotsConfig, plots
    from harness.run import run
    from methods import drpo

    for seed in (0, 1):
        run(tiny_run(tmp_path, run_id=f"main{seed}", seed=seed, tag="main", updates=1, eval_at=(0.0, 1.0),
                     count_flops=False), drpo.Config(m=2), progress=False)
    for kernel in ("laplacian", "rbf"):
        run(tiny_run(tmp_path, run_id=f"abl-{kernel}", tag=f"ablation:kernel={kernel}", updates=1, eval_at=(1.0,),
                     count_flops=False), drpo.Config(kernel=kernel, m=2), progress=False)
    run(tiny_run(tmp_path, run_id="trial", tag="study:s", updates=1, eval_at=(1.0,), count_flops=False),
        drpo.Config(m=2), progress=False)
    (tmp_path / "plots").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "plots" / "earlier__figure.png")  # drawn from runs no longer here
    index = plots(PlotsConfig(out=str(tmp_path)))
    text = index.read_text()
    assert "## Kept from earlier runs" in text and "[`earlier__figure.png`]" in text  # still listed, marked
    assert text.index("## Kept from earlier runs") > text.index("[`main__samples_same_noise.png`]")
    stems = ["main__jpeg__vs_updates_flops_seconds", "main__samples_same_noise", "ablation-kernel__ablation_bars"]
    for stem in stems:
        assert f"[`{stem}.png`]" in text
        for suffix in (".png", ".pdf"):
            assert (index.parent / f"{stem}{suffix}").stat().st_size > 1000
        with Image.open(index.parent / f"{stem}.png") as image:
            assert min(image.size) > 100
    # One figure per ablation axis, not one per variant; a study's trials are left to its report.
    assert text.count("ablation_bars") == 2  # the link text and its target
    assert "study" not in text
