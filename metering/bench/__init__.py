"""`metering bench` (`make bench`): the system's throughput and latency on this machine.

One run measures, on the same machine and stack:

- (a) the broker's ceiling: aiokafka alone producing then consuming realistic envelopes;
- (b) end-to-end sustained usage events/s: `POST /v1/usage/batch` through ingest, folded by
  both ledger and quota;
- (c) freshness: from ingest's acceptance of a usage to its effect on `authorize`;
- (d) `authorize` requests/s and latency over HTTP against quota's single worker;
- (e) the pure fold's events/s on one core;
- (f) `metering replay` events/s from the ledger's archive;

and writes `results.json`, `summary.md` and `throughput_latency.png` to the output directory.
Modules: `load` (the realistic workload), `broker`, `endtoend`, `authorize`, `core` (the
phases), `monitor` (CPU shares, the timeline), `report` (the files), `run` (the order of it
all) and `cli` (the `metering bench` command).
"""
