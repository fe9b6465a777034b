"""Every shipped tuned entry (autotune_cache/*.json) is found by a kernel of today's generator.

An entry's key names the generated source and the search space it was tuned over; a generator
or tuning-space change strands it (it stays in the file, and no launch ever finds it). Then
re-tune on a GPU (``STAGES=autotune bash benchmarks/gpu_check.sh``) or move the file to
``benchmarks/results/`` as a record: the shipped folder holds live entries only."""

import json
from pathlib import Path

import pytest

from tritp.presets import preset
from tritp.tuning import cache
from tritp.tuning.tuner import direction_specs

SHIPPED = sorted((Path(__file__).resolve().parent.parent / "autotune_cache").glob("*__*.json"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_entry_matches_a_kernel_of_today(path, monkeypatch):
    data = json.loads(path.read_text())
    entries = data["entries"]
    assert entries, f"{path.name}: no entries"
    monkeypatch.setattr(cache, "triton_version", lambda: data["triton"])
    live = set()
    for label in {e["label"] for e in entries.values() if e["key"]["family"] == "cg"}:
        problem, _ = preset(label)
        batches = {(e["key"]["dtype"], e["tuned_batch"]) for e in entries.values() if e["label"] == label}
        for _, spec in direction_specs(problem, ("fwd", "bwd", "dbl"), first_layer=True):
            for dtype, batch in batches:
                live.add(cache.key_hash(cache.make_key(problem, spec, dtype, batch, data["gpu"])))
    stale = sorted(f"{e['label']} {e['key']['direction'][:40]}" for h, e in entries.items()
                   if e["key"]["family"] == "cg" and h not in live)
    assert not stale, f"{path.name}: entries no kernel finds (re-tune, or move the file out): {stale}"
