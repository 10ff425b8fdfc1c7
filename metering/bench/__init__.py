"""`metering bench` (`make bench`): the system's throughput and latency on this machine.

One run measures, on the same machine and stack:

- (a) the broker's ceiling: aiokafka alone producing then consuming realistic envelopes;
- (b) end-to-end sustained usage events/s: `POST /v1/usage/batch` of 100 reports over 10,000
  Zipf-skewed accounts through ingest, folded by both ledger and quota; (b1) the same with
  one report per `POST /v1/usage` from 64 connections;
- (c) freshness: from ingest's acceptance of a usage to its effect on `authorize`, at half
  of (b)'s rate; (c1) from a new API key's 201 until `authorize` knows it;
- (d) `authorize` requests/s and latency over HTTP against quota's single worker, alone and
  while (c)'s load runs;
- (e) the pure fold's events/s on one core;
- (f) `metering replay` events/s from the ledger's archive;
- (g) quota's resident memory per account that received usage;

and writes `results.json`, `summary.md` and `throughput_latency.png` to the output directory.
Modules: `load` (the realistic workload, provisioning), `rawhttp` (a lean HTTP client),
`broker`, `endtoend`, `authorize`, `fold_bench` (the phases), `monitor` (CPU shares, memory,
the timeline), `report` (the files), `run` (the order of it all) and `cli` (the `metering
bench` command).
"""
