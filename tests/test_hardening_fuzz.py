"""A short fuzz campaign (benchmarks/fuzz.py): mutated .cvae files, codec model files and
images, each in a worker under a time and memory limit, give clean errors or results only."""

from __future__ import annotations

import random
import struct
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))  # benchmarks/ is scripts, not a package
import fuzz  # noqa: E402


def test_a_short_campaign_has_no_crash_hang_traceback_or_memory_blow_up(tmp_path):
    counts = fuzz.campaign(60, seed=0, workers=1, out=tmp_path, kinds=list(fuzz.KINDS),
                           quiet=True)
    total = {c: sum(n[c] for n in counts.values()) for c in fuzz.CLASSES}
    assert sum(total.values()) == 60
    assert {kind for kind, _ in counts} == set(fuzz.KINDS)
    bad = {key: dict(c) for key, c in counts.items() if any(c[b] for b in fuzz.BAD)}
    assert not bad, f"{bad}; inputs and tracebacks in {tmp_path / 'failures'}"
    assert total["clean"] > 30  # the mutations do reach the checks


def test_the_worker_pool_classifies_hangs_crashes_and_memory_blow_ups(tmp_path):
    """The classes that a healthy campaign never shows, made on purpose: a worker that
    sleeps past the limit, one killed by a signal, one that allocates past its limit."""
    results = {}
    cases = [fuzz.Case(i, "probe", what, what.encode(), ".x")
             for i, what in enumerate(["sleep", "segv", "allocate", "fine"])]
    pool = fuzz.Pool(1, tmp_path / "unused", memory_mb=256, timeout=3,
                     target_class=_ProbeTarget)
    pool.run(cases, lambda case, cls, detail: results.__setitem__(case.mutation, cls))
    assert results == {"sleep": "hang", "segv": "crash", "allocate": "memory",
                       "fine": "success"}


class _ProbeTarget:
    """Stands in for the codec in the pool test (the workers import it from here)."""

    def __init__(self, model_path, work):
        pass

    def run(self, kind, data, suffix):
        import os
        import signal
        import time

        what = data.decode()
        if what == "sleep":
            time.sleep(60)
        elif what == "segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        elif what == "allocate":
            bytearray(2**34)
        return what


def test_header_fields_come_from_the_container_struct():
    from clearvae.codec import container

    fields = fuzz.header_fields()
    assert fields[0][:2] == ("magic", 0)
    sizes = [struct.calcsize("<" + code) for _, _, code in fields]
    assert sum(sizes) == container._HEAD.size
    assert all(a[1] + s == b[1] for a, b, s in zip(fields, fields[1:], sizes))
    names = [name for name, _, _ in fields]
    assert any("height" in n for n in names) and any("width" in n for n in names)


def test_cases_are_reproducible_from_the_seed(tmp_path):
    seeds = {"cvae": [("x", b"CVAE" + bytes(60))], "image": [], "model": []}
    a = [fuzz.make_case(seeds, ["cvae"], 3, i).data for i in range(5)]
    b = [fuzz.make_case(seeds, ["cvae"], 3, i).data for i in range(5)]
    assert a == b and len(set(a)) > 1
    assert fuzz._interesting(random.Random(0), 5, 8) != 5


def test_a_campaign_run_in_chunks_adds_up_to_the_same_table(tmp_path):
    """A long campaign runs in chunks (--start) that each keep their counts on disk; merged,
    they give the counts of the campaign run at once, and overlapping chunks are refused."""
    whole = fuzz.campaign(8, seed=5, workers=1, out=tmp_path / "whole", kinds=["cvae"],
                          quiet=True)
    for start in (0, 4):
        fuzz.campaign(4, seed=5, workers=1, out=tmp_path / "chunks", kinds=["cvae"],
                      quiet=True, start=start)
    merged, seconds, records = fuzz.merge(tmp_path / "chunks")
    assert {k: dict(c) for k, c in merged.items()} == {k: dict(c) for k, c in whole.items()}
    assert [(r["start"], r["done"]) for r in records] == [(0, 4), (4, 4)] and seconds > 0
    fuzz.campaign(2, seed=5, workers=1, out=tmp_path / "chunks", kinds=["cvae"], quiet=True,
                  start=3)
    with pytest.raises(SystemExit, match="overlap"):
        fuzz.merge(tmp_path / "chunks")
