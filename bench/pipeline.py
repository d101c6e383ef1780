"""Pipeline benchmark: validate + scale + score + alerts + summaries + durable store.

Two shapes of batch from the simulated signal generators:

* large: 10,000 tags x 100 steps per batch (a poll group read in bulk);
* small: 1,000 tags x 1 step per batch (one poll of a wide group).

Prints, for each: readings/s through ``ToolPipeline.process`` including the store's
group commits (wall time until every block is committed), p50/p99 ingestion latency
(read done -> accepted by the pipeline, i.e. ``process`` returned), and bytes on
disk per reading. Run: ``.venv/bin/python bench/pipeline.py [--seconds S]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from drivers.base import PollGroup
from drivers.batch import ReadingBatch
from drivers.signals import SignalGenerator, SignalSpec
from gateway.config.models import (
    GatewayIdentity,
    PollGroupConfig,
    StoreConfig,
    TagConfig,
    ToolConfig,
)
from gateway.pipeline import ToolPipeline
from gateway.store import Store
from edge_models.ewma import EwmaParams
from drivers.simulated import SimulatedSettings

NS_PER_S = 1_000_000_000


def build_tool(k: int) -> ToolConfig:
    names = [f"t{i:05d}" for i in range(k)]
    tags = tuple(
        TagConfig(
            name=name,
            unit="u",
            limits=(-1e9, 1e9),
            source=SignalSpec(level=100.0 + i % 50, noise=0.3, amplitude=1.0),
        )
        for i, name in enumerate(names)
    )
    tool = ToolConfig(
        id="bench",
        driver=SimulatedSettings(kind="simulated", seed=1),
        poll_groups=(PollGroupConfig(name="g", interval_s=1.0, tags=tuple(names)),),
        tags=tags,
        scorers={"ewma": EwmaParams()},
    )
    rule = tool.alerts
    return tool.model_copy(
        update={"tags": tuple(t.model_copy(update={"alerts": rule}) for t in tags)}
    )


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


def run(k: int, steps: int, count: int, workdir: Path) -> None:
    tool = build_tool(k)
    store = Store.open(workdir / f"bench-{k}x{steps}.db", StoreConfig())
    pipeline = ToolPipeline(
        tool,
        GatewayIdentity(site="bench", id="gw"),
        "edge",
        store,
        summary_window_s=60.0,
        telemetry=False,
    )
    data = batches(k, steps, count)
    latencies = np.empty(count)
    start = time.perf_counter()
    for i, batch in enumerate(data):
        read_done = time.perf_counter_ns()
        pipeline.process(batch)
        latencies[i] = time.perf_counter_ns() - read_done
    processed = time.perf_counter() - start
    store.flush(timeout=300)
    committed = time.perf_counter() - start
    readings = k * steps * count
    blocks_bytes = store.stats().readings_bytes
    store.close()
    db_bytes = sum(p.stat().st_size for p in workdir.glob(f"bench-{k}x{steps}.db*"))

    print(f"{k} tags x {steps} steps, {count} batches ({readings:,} readings)")
    print(f"  pipeline only:       {readings / processed / 1e6:8.2f} M readings/s")
    print(f"  pipeline + commit:   {readings / committed / 1e6:8.2f} M readings/s")
    print(
        f"  ingestion latency:   p50 {np.percentile(latencies, 50) / 1e3:8.1f} us, "
        f"p99 {np.percentile(latencies, 99) / 1e3:8.1f} us"
    )
    print(f"  reading blocks:      {blocks_bytes / readings:8.2f} bytes/reading")
    print(f"  database on disk:    {db_bytes / readings:8.2f} bytes/reading")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", type=int, default=60, help="large batches to run")
    parser.add_argument("--small", type=int, default=3000, help="small batches to run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(10_000, 100, args.large, Path(tmp))
        run(1_000, 1, args.small, Path(tmp))


if __name__ == "__main__":
    main()
