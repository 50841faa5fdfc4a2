"""``FleetClient.decommission`` (ADR 0013) against scripted node answers: one
``Decommission`` with failover, then every node's status until each reports the fleet
decommissioned, within a deadline; refusals and bad arguments."""

from __future__ import annotations

import pytest

from hsmvault.errors import InvalidParameter, Unavailable
from hsmvault.fleet.fleet_keys import FleetSecretKeys
from hsmvault.host.fleet_client import (
    DecommissionRefused,
    DecommissionReport,
    FleetClient,
    NodeAnswer,
)
from hsmvault.wire import hsm_api as api

KEYS = FleetSecretKeys.generate().public()


class Scripted(FleetClient):
    """A 3-node FleetClient whose nodes answer from a script instead of sockets."""

    def __init__(self, *, decommission: api.Response, lagging: dict[int, int]) -> None:
        super().__init__([("127.0.0.1", 9)] * 3, public_keys=KEYS)
        self.decommission_answer = decommission
        self.lagging = dict(lagging)  # node -> status polls before it reports it
        self.down: set[int] = set()
        self.sent: list[tuple[type[api.Request], int | None, bool]] = []

    def call(
        self, request: bytes, *, prefer: int | None = None, failover: bool = True
    ) -> NodeAnswer:
        decoded = api.decode_request(request)
        self.sent.append((type(decoded), prefer, failover))
        if isinstance(decoded, api.DecommissionRequest):
            assert decoded.fleet_id == KEYS.fleet_id
            response = self.decommission_answer
            return NodeAnswer(0, response, response.to_bytes())
        assert isinstance(decoded, api.StatusRequest)
        assert prefer is not None
        if prefer in self.down:
            raise Unavailable("down")
        left = self.lagging.get(prefer, 0)
        self.lagging[prefer] = left - 1
        status = api.StatusResponse(api.Outcome.OK, 0, 0, 0, left <= 0)
        return NodeAnswer(prefer, status, status.to_bytes())


def test_decommission_waits_for_every_node_to_report_it() -> None:
    client = Scripted(
        decommission=api.DecommissionResponse(api.Outcome.OK, 7), lagging={1: 3, 2: 1}
    )
    sleeps: list[float] = []
    report = client.decommission(sleep=sleeps.append)
    assert report == DecommissionReport(7, (0, 1, 2), ())
    assert client.sent[0] == (api.DecommissionRequest, None, True)  # with failover
    statuses = [s for s in client.sent if s[0] is api.StatusRequest]
    assert all(not failover for _, _, failover in statuses)  # each node asked itself
    assert {prefer for _, prefer, _ in statuses} == {0, 1, 2}
    assert len(sleeps) == 3


def test_nodes_that_never_confirm_are_reported_not_hidden() -> None:
    client = Scripted(decommission=api.DecommissionResponse(api.Outcome.OK, 0), lagging={})
    client.down = {2}
    report = client.decommission(confirm_timeout=0, sleep=lambda _: None)
    assert report.confirmed == (0, 1)
    assert report.unconfirmed == (2,)
    assert report.erased_records == 0


@pytest.mark.parametrize(
    "answer",
    [
        api.DecommissionResponse.refused(api.Outcome.BAD_REQUEST),
        api.ErrorResponse(api.Outcome.BAD_REQUEST),
    ],
)
def test_a_refusal_raises_and_asks_no_status(answer: api.Response) -> None:
    client = Scripted(decommission=answer, lagging={})
    with pytest.raises(DecommissionRefused) as refused:
        client.decommission(sleep=lambda _: None)
    assert refused.value.outcome is api.Outcome.BAD_REQUEST
    assert [s[0] for s in client.sent] == [api.DecommissionRequest]


def test_arguments_are_checked_before_anything_is_sent() -> None:
    bare = FleetClient([("127.0.0.1", 9)])  # no public keys: the id must be given
    with pytest.raises(InvalidParameter):
        bare.decommission()
    for bad in (b"", bytes(31), "00" * 32):
        with pytest.raises(InvalidParameter):
            bare.decommission(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameter):
        bare.decommission(bytes(32), confirm_timeout=-1)
