"""`publish_all` against the real broker: every message once, on the partition `send` picks,
in order per key, even when batches fill up and a message is larger than a batch."""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker

from metering.publishing import Outgoing, aiokafka_producer, publish_all
from metering.runtime import PRODUCER_BATCH_BYTES
from metering.stack import Stack
from metering.topics import TopicSpec, ensure_topics
from tests.integration.kafka_reading import read_until

PARTITIONS = 6


async def test_every_message_once_in_order_on_the_partition_send_would_pick(stack: Stack) -> None:
    topic = f"publishing-{uuid.uuid4().hex[:12]}"
    await ensure_topics(stack.kafka_bootstrap_servers, [TopicSpec(topic, PARTITIONS)])
    keys = [f"account-{n}" for n in range(40)]
    messages = [
        Outgoing(topic, keys[n % len(keys)], f'{{"n": {n}, "pad": "{"x" * 900}"}}'.encode())
        for n in range(4000)  # ~3.8 MB: more than one record batch per partition
    ]
    big = Outgoing(topic, keys[0], b'{"big": "' + b"y" * 600_000 + b'"}')  # > one batch
    messages.insert(700, big)

    broker = KafkaBroker(
        stack.kafka_bootstrap_servers, acks="all", max_batch_size=PRODUCER_BATCH_BYTES
    )
    await broker.start()
    reference = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap_servers)
    await reference.start()
    try:
        assert aiokafka_producer(broker) is not None, "the batched path must be the one tested"
        await publish_all(broker, messages)
        await reference.partitions_for(topic)
        expected_partition = {
            key: reference._partition(topic, None, None, None, key.encode(), None) for key in keys
        }
    finally:
        await reference.stop()
        await broker.stop()

    found = await read_until(
        stack.kafka_bootstrap_servers,
        topic,
        wanted=lambda record: True,
        done=lambda records: len(records) >= len(messages),
    )
    assert sorted(r.value for r in found) == sorted(m.value for m in messages)
    for record in found:
        key = record.key.decode()
        assert record.partition == expected_partition[key], key
        assert record.headers == (("content-type", b"application/json"),)
    for key in keys:
        sent = [m.value for m in messages if m.key == key]
        received = [r.value for r in sorted(found, key=lambda r: r.offset) if r.key == key.encode()]
        assert received == sent, f"{key}: out of order"
