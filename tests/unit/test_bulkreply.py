"""A bulk Pipeline reply, encoded by hand, parses as the message it stands for."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cachegate.rpc._bulkreply import BULK_REPLY_BYTES, BulkGate, EncodedReply, reply_of, wire
from cachegate.v1 import cache_pb2 as pb

MIB = 1024 * 1024
_OUTCOMES = [pb.OUTCOME_VALUE, pb.OUTCOME_NOT_FOUND, pb.OUTCOME_ERROR, pb.OUTCOME_OK]


def expected(
    outcomes: list[pb.Outcome],
    values: list[bytes],
    errors: list[pb.OperationError],
    stale: list[pb.StaleAnswer],
) -> pb.PipelineResponse:
    return pb.PipelineResponse(outcomes=outcomes, values=values, errors=errors, stale=stale)


def test_small_replies_stay_messages() -> None:
    reply = reply_of([pb.OUTCOME_VALUE], [b"x" * (BULK_REPLY_BYTES - 1)])
    assert isinstance(reply, pb.PipelineResponse)
    assert wire(reply) == reply.SerializeToString()


def test_a_bulk_reply_parses_as_its_message() -> None:
    outcomes = [pb.OUTCOME_VALUE, pb.OUTCOME_ERROR, pb.OUTCOME_NOT_FOUND, pb.OUTCOME_VALUE]
    values = [b"a" * MIB, b"", b"", b"b" * 300]  # lengths of 3 bytes and 2 bytes as varints
    errors = [pb.OperationError(index=1, code=8, message="value of 2 bytes left out")]
    stale = [pb.StaleAnswer(index=3, age_seconds=1.5)]
    reply = reply_of(outcomes, values, errors, stale)
    assert isinstance(reply, EncodedReply)
    assert not reply.message.values  # what the tenant counters read: no copy of the values
    assert list(reply.message.outcomes) == outcomes
    assert pb.PipelineResponse.FromString(wire(reply)) == expected(outcomes, values, errors, stale)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(_OUTCOMES), st.binary(max_size=300)), min_size=1, max_size=40
    )
)
def test_any_bulk_reply_parses_as_its_message(ops: list[tuple[pb.Outcome, bytes]]) -> None:
    outcomes = [outcome for outcome, _ in ops] + [pb.OUTCOME_VALUE]
    values = [value for _, value in ops] + [b"z" * BULK_REPLY_BYTES]  # makes it bulk
    reply = reply_of(outcomes, values)
    assert isinstance(reply, EncodedReply)
    assert pb.PipelineResponse.FromString(wire(reply)) == expected(outcomes, values, [], [])


def test_the_gate_admits_one_bulk_reply_at_a_time() -> None:
    gate = BulkGate()
    assert gate.acquire(0.0)
    assert not gate.acquire(0.01)  # a second one waits, bounded, then is told so
    gate.release()
    assert gate.acquire(0.0)
    gate.release()
