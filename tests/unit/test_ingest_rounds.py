"""ingest's group commit (`intake.Rounds`) and its derived usage event ids."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.intake import USAGE_EVENT_NAMESPACE, Rounds, UsageResult, usage_event_id


class Recorder:
    """A round that records the requests it was given and answers each report 'accepted'."""

    def __init__(self, pause: float = 0.01, fail: BaseException | None = None) -> None:
        self.rounds: list[list[list[Any]]] = []
        self.pause = pause
        self.fail = fail
        self.running = 0
        self.most_running = 0

    async def __call__(self, requests: Sequence[Sequence[Any]]) -> list[list[UsageResult]]:
        self.rounds.append([list(r) for r in requests])
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(self.pause)
            if self.fail is not None:
                raise self.fail
            return [[UsageResult("accepted") for _ in reports] for reports in requests]
        finally:
            self.running -= 1


async def test_requests_arriving_during_a_round_share_the_next_one() -> None:
    run = Recorder()
    rounds = Rounds(run, in_flight=1)
    first = asyncio.ensure_future(rounds.submit(["r0"]))
    await asyncio.sleep(0.001)  # its round is under way
    later = [rounds.submit([f"r{n}"]) for n in range(1, 10)]
    answers = await asyncio.gather(first, *later)
    assert [len(a) for a in answers] == [1] * 10
    # the first request has a round alone; the nine that came meanwhile share the next
    assert [len(r) for r in run.rounds] == [1, 9]
    assert [reports for r in run.rounds for reports in r] == [[f"r{n}"] for n in range(10)]


async def test_at_most_in_flight_rounds_run_at_once() -> None:
    run = Recorder()
    rounds = Rounds(run, in_flight=2)
    callers = []
    for _ in range(50):
        callers.append(asyncio.ensure_future(rounds.submit(["r"])))
        await asyncio.sleep(0.001)
    await asyncio.gather(*callers)
    assert run.most_running == 2
    assert sum(len(r) for r in run.rounds) == 50


async def test_a_round_takes_whole_requests_up_to_its_size() -> None:
    run = Recorder()
    rounds = Rounds(run, in_flight=1, max_items=5)
    await asyncio.gather(*(rounds.submit(["a"] * 3) for _ in range(5)))
    sizes = [sum(len(reports) for reports in r) for r in run.rounds]
    assert sizes == [3, 3, 3, 3, 3]  # never split, never two of 3 over 5
    big = Recorder()
    await Rounds(big, in_flight=1, max_items=5).submit(["a"] * 8)
    assert [sum(len(reports) for reports in r) for r in big.rounds] == [8]


async def test_a_failing_round_fails_each_of_its_requests_and_later_rounds_go_on() -> None:
    run = Recorder(fail=RuntimeError("broker down"))
    rounds = Rounds(run, in_flight=1)
    results = await asyncio.gather(
        *(rounds.submit(["r"]) for _ in range(3)),
        return_exceptions=True,
    )
    assert all(isinstance(r, RuntimeError) for r in results)
    run.fail = None
    assert await rounds.submit(["r"]) == [UsageResult("accepted")]


async def test_a_caller_that_goes_away_does_not_cancel_the_round() -> None:
    run = Recorder(pause=0.05)
    rounds = Rounds(run, in_flight=1)
    caller = asyncio.ensure_future(rounds.submit(["gone"]))
    await asyncio.sleep(0.01)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert await rounds.submit(["next"]) == [UsageResult("accepted")]
    assert run.rounds == [[["gone"]], [["next"]]]


async def test_a_lone_request_on_an_idle_service_does_not_wait() -> None:
    run = Recorder(pause=0.05)
    rounds = Rounds(run, in_flight=2, fill=100, linger=10.0)
    caller = asyncio.ensure_future(rounds.submit(["r0"]))
    await asyncio.sleep(0.001)
    assert run.rounds == [[["r0"]]]  # under way at once, no linger with nothing else running
    await asyncio.wait_for(caller, 1.0)


async def test_while_a_round_is_under_way_the_next_one_waits_to_fill_up() -> None:
    run = Recorder(pause=0.5)
    rounds = Rounds(run, in_flight=2, fill=5, linger=10.0)
    callers = [asyncio.ensure_future(rounds.submit(["r0"]))]
    await asyncio.sleep(0.001)
    callers += [asyncio.ensure_future(rounds.submit([f"r{n}"])) for n in range(1, 4)]
    await asyncio.sleep(0.01)
    assert len(run.rounds) == 1  # 3 waiting, fewer than 5: the second slot lingers
    callers += [asyncio.ensure_future(rounds.submit(["r4", "r5"]))]
    await asyncio.sleep(0.01)
    assert [len(r) for r in run.rounds] == [1, 4]  # 5 reports wait: it goes at once
    await asyncio.wait_for(asyncio.gather(*callers), 2.0)


async def test_a_lingering_round_goes_when_the_round_under_way_ends() -> None:
    run = Recorder(pause=0.02)
    rounds = Rounds(run, in_flight=2, fill=100, linger=10.0)
    first = asyncio.ensure_future(rounds.submit(["r0"]))
    await asyncio.sleep(0.001)
    later = [rounds.submit([f"r{n}"]) for n in range(1, 4)]
    await asyncio.wait_for(asyncio.gather(first, *later), 2.0)  # not 10 s
    assert [len(r) for r in run.rounds] == [1, 3]


async def test_linger_bounds_the_wait_for_a_fuller_round() -> None:
    run = Recorder(pause=1.0)
    rounds = Rounds(run, in_flight=2, fill=100, linger=0.01)
    callers = [asyncio.ensure_future(rounds.submit(["r0"]))]
    await asyncio.sleep(0.001)
    callers.append(asyncio.ensure_future(rounds.submit(["r1"])))
    await asyncio.sleep(0.2)
    assert run.rounds == [[["r0"]], [["r1"]]]  # the second went while the first still ran
    await asyncio.wait_for(asyncio.gather(*callers), 3.0)


def test_a_report_has_one_event_id_and_another_body_another() -> None:
    first = usage_event_id("acct", "req-1", b"\x01" * 32)
    assert first == usage_event_id("acct", "req-1", b"\x01" * 32)
    assert first != usage_event_id("acct", "req-1", b"\x02" * 32)
    assert first != usage_event_id("acct2", "req-1", b"\x01" * 32)
    assert first != usage_event_id("acct", "req-2", b"\x01" * 32)
    # no two (account, request id) pairs collide by moving a separator
    assert usage_event_id("a", "b/c", b"") != usage_event_id("a/b", "c", b"")
    assert usage_event_id("a", "b\x00c", b"") != usage_event_id("a\x00b", "c", b"")


@given(st.text(), st.text(), st.binary(max_size=40))
def test_a_usage_event_id_is_the_uuid5_of_its_account_request_id_and_digest(
    account_id: str, request_id: str, digest: bytes
) -> None:
    """The id is computed by hand for speed; it must stay exactly this uuid5, or a report
    accepted before an upgrade and retried after it would be a second event."""
    name = orjson.dumps([account_id, request_id, digest.hex()]).decode()
    expected = uuid.uuid5(USAGE_EVENT_NAMESPACE, name)
    made = usage_event_id(account_id, request_id, digest)
    assert made == expected
    assert hash(made) == hash(expected)
    assert isinstance(made, uuid.UUID)
    assert made.version == 5
    assert str(made) == str(expected)
    assert made.bytes == expected.bytes
