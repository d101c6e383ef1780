"""Pipeline benchmark: validate + scale + score + alerts + summaries + durable store.

Two shapes of batch from the simulated signal generators:

* large: 10,000 tags x 100 steps per batch (a poll group read in bulk);
* small: 1,000 tags x 1 step per batch (one poll of a wide group).

Every tag gets the scorers ``--scorers`` names: by default the gateway's default
stack (EWMA and level on every tag); ``--scorers ewma`` measures EWMA alone.

The detectors learn and fit in a warm-up of ``fit_rows`` rows, timed apart; then
it prints, for each: readings/s through ``ToolPipeline.process`` (validate,
scale, score, alerts, summaries, hand-off to the store writer, which compresses
and commits on its own thread), the same including the wait for the last group
commit, p50/p99 ingestion latency (read done -> the pipeline task takes the
batch from the daemon's queue), p50/p99 processing time per batch, and bytes per
reading stored. The small batches run twice: back to back, and paced like a live
poll.

Run: ``make bench`` or ``.venv/bin/python bench/pipeline.py [--large N --small N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np
from measure import with_default_detectors

from drivers.base import PollGroup
from drivers.batch import ReadingBatch
from drivers.signals import SignalGenerator, SignalSpec
from drivers.simulated import SimulatedSettings
from gateway.config.models import (
    GatewayIdentity,
    PollGroupConfig,
    StoreConfig,
    TagConfig,
    ToolConfig,
)
from gateway.pipeline import ToolPipeline
from gateway.store import Store

NS_PER_S = 1_000_000_000
QUEUE_BATCHES = 256
# A wide group polled 500 times a second: 0.5 M readings/s arriving steadily.
SMALL_PACE_S = 0.002


def build_tool(k: int, scorers: tuple[str, ...] = ("ewma",)) -> ToolConfig:
    names = [f"t{i:05d}" for i in range(k)]
    tags = tuple(
        TagConfig(
            name=name,
            unit="u",
            limits=(-1e9, 1e9),
            scorers=scorers,
            source=SignalSpec(level=100.0 + i % 50, noise=0.3, amplitude=1.0),
        )
        for i, name in enumerate(names)
    )
    tool = ToolConfig(
        id="bench",
        driver=SimulatedSettings(kind="simulated", seed=1),
        poll_groups=(PollGroupConfig(name="g", interval_s=1.0, tags=tuple(names)),),
        tags=tags,
    )
    return with_default_detectors(tool)


def batches(k: int, steps: int, count: int) -> list[ReadingBatch]:
    tool = build_tool(k)
    generator = SignalGenerator(
        seed=1,
        tag_names=[t.name for t in tool.tags],
        specs=[t.source for t in tool.tags],
        step_s=0.01,
    )
    group = PollGroup("g", 1.0, tuple(range(k)))
    start = time.time_ns()
    out = []
    for b in range(count):
        t = (np.arange(steps) + b * steps) * 0.01
        values, quality = generator.sample(t)
        stamps = start + (t * NS_PER_S).astype(np.int64)
        out.append(ReadingBatch("bench", "g", stamps, group.tag_index, values, quality))
    return out


def run(
    k: int,
    steps: int,
    count: int,
    workdir: Path,
    pace_s: float,
    scorers: tuple[str, ...],
) -> None:
    tool = build_tool(k, scorers)
    store = Store.open(workdir / f"bench-{k}x{steps}.db", StoreConfig())
    pipeline = ToolPipeline(
        tool,
        GatewayIdentity(site="bench", id="gw"),
        "edge",
        store,
        summary_window_s=60.0,
        telemetry=False,
    )
    # The detectors learn from the first ``fit_rows`` rows of a group and fit
    # there: a one-off at start, timed apart from the steady state measured.
    warm = -(-tool.fit_rows // steps)
    data = batches(k, steps, warm + count)
    start = time.perf_counter()
    for batch in data[:warm]:
        pipeline.process(batch)
    warm_s = time.perf_counter() - start
    accept, process = asyncio.run(feed(pipeline, data[warm:], pace_s))
    processed = process.sum() / 1e9
    start = time.perf_counter()
    store.flush(timeout=300)
    commit_tail = time.perf_counter() - start
    readings = k * steps * count
    stored = k * steps * (warm + count)
    store.close()
    with sqlite3.connect(store.path) as db:
        (blocks_bytes,) = db.execute(
            "SELECT sum(length(data)) FROM reading_blocks"
        ).fetchone()
    db_bytes = sum(p.stat().st_size for p in workdir.glob(f"bench-{k}x{steps}.db*"))

    pacing = f", one every {pace_s * 1e3:g} ms" if pace_s else ", back to back"
    print(f"{k} tags x {steps} steps, {count} batches{pacing} ({readings:,} readings)")
    print(f"  warm-up, {warm} batches:  {warm_s:8.2f} s (learning and fitting)")
    print(f"  pipeline (process):  {readings / processed / 1e6:8.2f} M readings/s")
    if not pace_s:
        total = processed + commit_tail
        print(f"  + last commit wait:  {readings / total / 1e6:8.2f} M readings/s")
    if pace_s:
        # Back to back, the queue is always full and the wait is the backlog's.
        print(
            f"  ingestion latency:   p50 {np.percentile(accept, 50) / 1e3:8.1f} us, "
            f"p99 {np.percentile(accept, 99) / 1e3:8.1f} us (read done -> accepted)"
        )
    print(
        f"  processing a batch:  p50 {np.percentile(process, 50) / 1e3:8.1f} us, "
        f"p99 {np.percentile(process, 99) / 1e3:8.1f} us"
    )
    print(f"  reading blocks:      {blocks_bytes / stored:8.2f} bytes/reading")
    print(f"  database on disk:    {db_bytes / stored:8.2f} bytes/reading")


async def feed(
    pipeline: ToolPipeline, data: list[ReadingBatch], pace_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """Hand batches to the pipeline task through the daemon's kind of queue.

    Returns per batch the time from "read done" to the pipeline taking the batch
    (ns) and the time ``process`` took (ns).
    """
    queue: asyncio.Queue[tuple[int, ReadingBatch]] = asyncio.Queue(QUEUE_BATCHES)
    accept = np.empty(len(data))
    process = np.empty(len(data))

    async def consume() -> None:
        for i in range(len(data)):
            read_done, batch = await queue.get()
            taken = time.perf_counter_ns()
            accept[i] = taken - read_done
            pipeline.process(batch)
            process[i] = time.perf_counter_ns() - taken

    consumer = asyncio.create_task(consume())
    next_at = time.perf_counter()
    for batch in data:
        if pace_s:
            next_at += pace_s
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        await queue.put((time.perf_counter_ns(), batch))
    await consumer
    return accept, process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", type=int, default=60, help="large batches to run")
    parser.add_argument("--small", type=int, default=3000, help="small batches to run")
    parser.add_argument(
        "--scorers",
        default=",".join(TagConfig.model_fields["scorers"].default),
        help="scorers on every tag, comma-separated (default: the gateway's)",
    )
    args = parser.parse_args()
    scorers = tuple(args.scorers.split(","))
    print(f"scorers on every tag: {', '.join(scorers)}")
    with tempfile.TemporaryDirectory() as tmp:
        run(10_000, 100, args.large, Path(tmp), 0.0, scorers)
        run(1_000, 1, args.small, Path(tmp), 0.0, scorers)
        run(1_000, 1, args.small, Path(tmp) / "paced", SMALL_PACE_S, scorers)


if __name__ == "__main__":
    main()
