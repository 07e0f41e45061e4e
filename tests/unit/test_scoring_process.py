"""The scoring process: a child's scores equal the parent's, in order; failures surface.

Also the processor's split (``prepare`` then ``finish``), which is what lets an engine
hand a batch's scoring to the child while it prepares the next one.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import numpy as np
import pytest

from driftline.core.spec import FeatureSpec
from driftline.core.state import FeatureBlock, FeatureState
from driftline.model.registry import LoadedModel
from driftline.model.runtimes.compiled import CompiledScorer, load_compiled_scorer
from driftline.model.runtimes.process import ScoringProcess, ScoringProcessFailed
from driftline.model.runtimes.sklearn import Scorer
from driftline.processor import RawBatch, ScoringProcessor
from driftline.simulate import Population


@pytest.fixture(scope="module")
def raw_batches(spec: FeatureSpec) -> list[RawBatch]:
    """Live events as a worker consumes them: 4 partitions, offsets per partition."""
    population = Population(n_customers=200, seed=3)
    population.generate_history(days=30)
    events = list(population.stream_events(max_events=3_000))
    encode = msgspec.json.Encoder().encode
    values = [encode(e) for e in events]
    keys = [e["customer_id"].encode() for e in events]
    partitions = np.array([sum(k) % 4 for k in keys], np.int32)
    offsets = np.zeros(len(keys), np.int64)
    for p in range(4):
        mine = partitions == p
        offsets[mine] = np.arange(mine.sum())
    values[17] = b"{not json"  # a reject inside a batch
    size = 500
    return [
        RawBatch(
            "events",
            values[i : i + size],
            keys[i : i + size],
            partitions[i : i + size],
            offsets[i : i + size],
        )
        for i in range(0, len(values), size)
    ]


def blocks_of(spec: FeatureSpec, batches: list[RawBatch], scorer: Scorer) -> list[FeatureBlock]:
    processor = ScoringProcessor(spec, scorer, changelog=False)
    blocks = []
    for raw in batches:
        block = processor.prepare(raw).block
        assert block is not None
        blocks.append(block)
    return blocks


def test_the_child_scores_each_block_as_the_parent_would_in_the_order_sent(
    spec: FeatureSpec, model: LoadedModel, raw_batches: list[RawBatch]
) -> None:
    scorer = Scorer(model)
    blocks = blocks_of(spec, raw_batches, scorer)
    with ScoringProcess(scorer) as child:
        assert child.pid is not None and child.pid != os.getpid()
        for block in blocks:  # all in flight at once: answers come first in, first out
            child.submit(block)
        assert child.outstanding == len(blocks)
        for block in blocks:
            np.testing.assert_array_equal(child.result(), scorer.score_block(block))
        assert child.outstanding == 0


def test_a_compiled_scorer_is_rebuilt_from_its_model_in_the_child(
    spec: FeatureSpec, model: LoadedModel, raw_batches: list[RawBatch]
) -> None:
    """Its closures do not pickle: the copy is made by the same constructor instead."""
    scorer, _worst = load_compiled_scorer(model)
    copy = pickle.loads(pickle.dumps(scorer))
    assert type(copy) is CompiledScorer and copy.version == scorer.version
    block = blocks_of(spec, raw_batches[:1], scorer)[0]
    np.testing.assert_array_equal(copy.score_block(block), scorer.score_block(block))
    with ScoringProcess(scorer) as child:
        child.submit(block)
        np.testing.assert_array_equal(child.result(), Scorer(model).score_block(block))


def test_a_block_the_model_cannot_score_fails_its_batch_and_the_child_carries_on(
    spec: FeatureSpec, model: LoadedModel, raw_batches: list[RawBatch]
) -> None:
    scorer = Scorer(model)
    good = blocks_of(spec, raw_batches[:1], scorer)[0]
    # One numeric feature short: the frame lacks a column the model needs.
    bad = FeatureBlock(good.layout, good.numeric[:-1], good.categorical)
    with ScoringProcess(scorer) as child:
        child.submit(bad)
        child.submit(good)
        with pytest.raises(ScoringProcessFailed, match="scoring failed in the scoring process"):
            child.result()
        np.testing.assert_array_equal(child.result(), scorer.score_block(good))


def test_a_child_that_dies_is_reported_not_waited_for(
    spec: FeatureSpec, model: LoadedModel, raw_batches: list[RawBatch]
) -> None:
    scorer = Scorer(model)
    block = blocks_of(spec, raw_batches[:1], scorer)[0]
    child = ScoringProcess(scorer)
    try:
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        time.sleep(0.2)
        with pytest.raises(ScoringProcessFailed):
            child.submit(block)
            child.result(timeout_s=30)
    finally:
        child.close()


def test_discard_drops_the_outstanding_answers(
    spec: FeatureSpec, model: LoadedModel, raw_batches: list[RawBatch]
) -> None:
    scorer = Scorer(model)
    first, second = blocks_of(spec, raw_batches[:2], scorer)
    with ScoringProcess(scorer) as child:
        child.submit(first)
        child.submit(first)
        child.discard()
        assert child.outstanding == 0
        child.submit(second)  # the next answer is the next block's, not a stale one
        np.testing.assert_array_equal(child.result(), scorer.score_block(second))


def test_prepare_then_finish_is_process(
    spec: FeatureSpec, model: LoadedModel, raw_batches: list[RawBatch]
) -> None:
    """Split or not, a batch gives the same predictions, rejects, changelog and state."""
    scorer = Scorer(model)
    # A clock after the simulated events (an earlier one would make them future).
    whole = ScoringProcessor(spec, scorer, clock=lambda: 2_000_000_000.0)
    split = ScoringProcessor(spec, scorer, clock=lambda: 2_000_000_000.0)
    rejected = 0
    for raw in raw_batches:
        expected = whole.process(raw)
        rejected += len(expected.rejected)
        prepared = split.prepare(raw)
        assert prepared.block is not None
        got = split.finish(prepared, scorer.score_block(prepared.block))
        assert got.prediction_keys == expected.prediction_keys
        assert got.prediction_values == expected.prediction_values
        assert got.rejected == expected.rejected
        assert got.changelog == expected.changelog
        assert (got.n_late, got.n_redelivered) == (expected.n_late, expected.n_redelivered)
    assert rejected == 1, "the malformed value was not among the batches"
    for p, state in whole.states.items():
        other: FeatureState = split.states[p]
        customers = sorted(state._slots)
        assert customers == sorted(other._slots)
        assert state.export(customers) == other.export(customers)


def test_the_child_exits_when_its_parent_is_killed(model: LoadedModel, tmp_path: Path) -> None:
    """A worker killed -9 leaves no scoring process behind: the child reads the end of
    its pipe and stops."""
    script = tmp_path / "parent.py"
    with (tmp_path / "scorer.pkl").open("wb") as f:
        pickle.dump(Scorer(model), f)
    script.write_text(  # spawn imports the main module again: hence the guard
        "import pickle, time\n"
        "from driftline.model.runtimes.process import ScoringProcess\n"
        "if __name__ == '__main__':\n"
        f"    scorer = pickle.load(open({str(tmp_path / 'scorer.pkl')!r}, 'rb'))\n"
        "    child = ScoringProcess(scorer)\n"
        "    print(child.pid, flush=True)\n"
        "    time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        assert _alive(child_pid)
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 20
        while _alive(child_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child_pid), "the scoring process outlived its parent"
    finally:
        parent.kill()


def _alive(pid: int) -> bool:
    """Running (a zombie, reaped by init soon, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
