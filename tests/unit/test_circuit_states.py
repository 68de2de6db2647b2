"""The breaker's states on the wire: one map each way (the server's from CircuitState to
the proto enum, the client's back to names), which agree and leave no state out."""

from __future__ import annotations

from cachegate.client._legacy import CIRCUIT_STATE_FROM_PROTO
from cachegate.core import CircuitState
from cachegate.rpc._admin import CIRCUIT_STATE_TO_PROTO
from cachegate.v1 import cache_pb2 as pb


def test_the_server_maps_every_state_to_its_own_proto_value() -> None:
    assert set(CIRCUIT_STATE_TO_PROTO) == set(CircuitState)
    for state, value in CIRCUIT_STATE_TO_PROTO.items():
        assert pb.CircuitState.Name(value) == f"CIRCUIT_STATE_{state.name}"


def test_the_client_reads_back_the_servers_names() -> None:
    back = {
        state.value: CIRCUIT_STATE_FROM_PROTO[value]
        for state, value in CIRCUIT_STATE_TO_PROTO.items()
    }
    assert back == {state.value: state.value for state in CircuitState}


def test_the_client_knows_every_proto_value_but_unspecified() -> None:
    known = set(pb.CircuitState.values()) - {pb.CIRCUIT_STATE_UNSPECIFIED}
    assert set(CIRCUIT_STATE_FROM_PROTO) == known
