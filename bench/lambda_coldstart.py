"""How fast the Lambda functions start and how much of a worker batch is our own time.

    python bench/lambda_coldstart.py [--runs 7]

1. Cold start of a webhook function (wall and CPU time): in a fresh interpreter, import the
   handler module, load the mapping, build the connector and the SQS client (what the first
   request pays besides the network). Measured for the in-memory fake connector (our
   machinery alone) and for the HubSpot connector when it is importable. Target: < 400 ms.
2. A 10-message worker batch through the handler, with the CRM calls' time subtracted, on the
   SQLite store (our code alone; target < 100 ms) and on DynamoDB under moto (includes the
   emulator, so an upper bound).

No network: fake credentials, SSM not used (the connector's variables are set directly).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "eu-west-1",
    "POWERTOOLS_LOG_LEVEL": "WARNING",
    "POWERTOOLS_METRICS_DISABLED": "true",
    "STATE_TABLE": "bench-state",
    "WORK_QUEUE_NAME": "bench-work.fifo",
    "WORK_QUEUE_URL": "https://sqs.eu-west-1.amazonaws.com/123456789012/bench-work.fifo",
    "POWERTOOLS_METRICS_NAMESPACE": "Bench",
    "SECRET_NAMES": "",
}

COLD_START = """
import time, json
started, cpu_started = time.perf_counter(), time.process_time()
{prelude}
from crm_elasticity.connectors.aws import handlers
imported = time.perf_counter()
box = handlers.container()
connector = box.connector({vendor!r})
queue = box.queue
queue.sqs  # the boto3 client
built = time.perf_counter()
ms = {{"import_ms": (imported - started) * 1000, "build_ms": (built - imported) * 1000,
      "cpu_ms": (time.process_time() - cpu_started) * 1000}}
print(json.dumps(ms))
"""


def cold_start(vendor: str, mapping: str, prelude: str, extra_env: dict[str, str], runs: int):
    env = {
        **os.environ,
        **FAKE_AWS,
        **extra_env,
        "ELASTICITY_MAPPINGS": mapping,
        "PYTHONPATH": str(ROOT),
        "PYTHONDONTWRITEBYTECODE": "0",
    }
    code = COLD_START.format(prelude=prelude, vendor=vendor)
    samples = []
    for _ in range(runs + 1):  # the first run compiles bytecode; it is not counted
        out = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            cwd=ROOT,
            check=True,  # noqa: S603
            capture_output=True,
            text=True,
        ).stdout
        samples.append(json.loads(out.strip().splitlines()[-1]))
    samples = samples[1:]
    total = [s["import_ms"] + s["build_ms"] for s in samples]
    return {
        "import_ms": round(statistics.median(s["import_ms"] for s in samples), 1),
        "build_ms": round(statistics.median(s["build_ms"] for s in samples), 1),
        "total_ms_median": round(statistics.median(total), 1),
        "total_ms_max": round(max(total), 1),
        # CPU time is what a busy benchmark machine cannot inflate (wall time includes waiting).
        "cpu_ms_median": round(statistics.median(s["cpu_ms"] for s in samples), 1),
    }


def worker_batch(store_kind: str, runs: int) -> dict[str, float]:
    os.environ.update(FAKE_AWS)
    sys.path.insert(0, str(ROOT))
    from moto import mock_aws

    from crm_elasticity.connectors.aws import handlers
    from crm_elasticity.connectors.aws.container import Container
    from crm_elasticity.core.dynamodb_store import DynamoDBStore
    from crm_elasticity.core.sqlite_store import SQLiteStore
    from tests.aws.harness import FakeContext
    from tests.fakes.memory_crm import MAPPING_PATH, MemoryConnector, MemoryCrm

    os.environ.update(
        {"ELASTICITY_MAPPINGS": str(MAPPING_PATH), "MEMORY_SECRET": "x", "MEMORY_CRM": "bench"}
    )
    crm_seconds = [0.0]
    for name in ("read_records", "write_records", "create_tasks"):
        original = getattr(MemoryConnector, name)

        def timed(self, *args, _original=original, **kwargs):
            started = time.perf_counter()
            try:
                return _original(self, *args, **kwargs)
            finally:
                crm_seconds[0] += time.perf_counter() - started

        setattr(MemoryConnector, name, timed)

    samples = []
    with mock_aws():
        for run in range(runs + 1):
            MemoryCrm.reset()
            if store_kind == "sqlite":
                store = SQLiteStore(":memory:")
            else:
                store = DynamoDBStore(f"bench-{run}")
                store.create_table()
            handlers._container = Container(store=store)
            now = datetime.now(UTC)
            records = []
            for i in range(10):
                body = {
                    "vendor": "memory",
                    "event": {
                        "event_id": f"r{run}-e{i}",
                        "contact_id": f"c{i % 7}",
                        "type": "open",
                        "occurred_at": (now - timedelta(minutes=10 - i)).isoformat(),
                    },
                }
                records.append(
                    {
                        "messageId": f"m{i}",
                        "receiptHandle": "h",
                        "body": json.dumps(body),
                        "attributes": {
                            "ApproximateReceiveCount": "1",
                            "MessageGroupId": f"memory:c{i % 7}",
                        },
                        "messageAttributes": {},
                        "md5OfBody": "",
                        "eventSource": "aws:sqs",
                        "eventSourceARN": "arn:aws:sqs:eu-west-1:123456789012:bench-work.fifo",
                        "awsRegion": "eu-west-1",
                    }
                )
            crm_seconds[0] = 0.0
            started = time.perf_counter()
            response = handlers.worker({"Records": records}, FakeContext())
            elapsed = time.perf_counter() - started
            assert response == {"batchItemFailures": []}, response
            if run:  # the first batch warms caches (policy compile, pydantic)
                samples.append((elapsed - crm_seconds[0]) * 1000)
    return {
        "own_ms_median": round(statistics.median(samples), 1),
        "own_ms_max": round(max(samples), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    results: dict[str, object] = {}
    memory = str(ROOT / "tests/fakes/memory.yaml")
    prelude = "import tests.fakes.memory_crm"
    results["cold_start_memory_connector"] = cold_start(
        "memory", memory, prelude, {"MEMORY_SECRET": "x"}, args.runs
    )
    try:
        results["cold_start_hubspot_connector"] = cold_start(
            "hubspot",
            "mappings/hubspot.yaml",
            "",
            {"HUBSPOT_ACCESS_TOKEN": "pat-bench", "HUBSPOT_CLIENT_SECRET": "bench"},
            args.runs,
        )
    except subprocess.CalledProcessError as exc:
        results["cold_start_hubspot_connector"] = f"not measured: {exc.stderr.strip()[-200:]}"
    results["worker_batch_10_sqlite"] = worker_batch("sqlite", args.runs)
    results["worker_batch_10_dynamodb_moto"] = worker_batch("dynamodb", args.runs)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
