# ruff: noqa: E501
"""Channel backends' config and secrets of every type and shape (issue 11, defect 7): the hub
answers a typed 400 saying what is wrong and changes nothing; never a 500."""

from __future__ import annotations

import itertools
import os
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kachery_node.errors import HubRequestError
from kachery_node.protocol.hub_requests import make_body, sign_body
from kachery_node.transport.pubsub.nats_jwt import new_seed
from tests.standins import fake_service_account

from .conftest import Actor


def now_ms() -> int:
    return int(time.time() * 1000)

NATS = {"backend": "nats", "url": "nats://127.0.0.1:4222"}
ABLY = {"backend": "ably"}
GCS = {"backend": "gcs", "bucket": "b", "endpoint": "http://127.0.0.1:9"}
_names = itertools.count()


def _name() -> str:
    return f"sec.c{next(_names)}-{os.getpid()}"


def _refused_400(words: str, call, *args, **kwargs) -> None:
    with pytest.raises(HubRequestError) as info:
        call(*args, **kwargs)
    assert (info.value.status, info.value.code) == (400, "malformed_request"), str(info.value)
    assert words in info.value.message, info.value.message


def _absent(owner, name: str) -> None:
    with pytest.raises(HubRequestError) as info:
        owner.client.show_channel(name)
    assert info.value.code == "unknown_channel"


def test_ill_typed_secrets_are_refused_on_create(hub, make_actor):
    owner = make_actor("owner")
    seed, sa = new_seed("account"), fake_service_account()
    cases = [
        ({"pubsub": NATS}, {"pubsub": "x"}, "secrets.pubsub"),
        ({"pubsub": ABLY}, {"pubsub": ["k"]}, "secrets.pubsub"),
        ({"pubsub": NATS}, {"pubsub": {"account_seed": 5}}, "account_seed"),
        ({"pubsub": NATS}, {"pubsub": {"account_seed": ["SA"]}}, "account_seed"),
        ({"pubsub": ABLY}, {"pubsub": {"api_key": {"a": 1}}}, "Ably API key"),
        ({"pubsub": ABLY}, {"pubsub": {"api_key": "app.key:secret"}, "bucket": 3}, "secrets.bucket"),
        ({"bucket": GCS}, {"bucket": "x"}, "secrets.bucket"),
        ({"bucket": GCS}, {"bucket": {"service_account": "x"}}, "service-account"),
        ({"bucket": GCS}, {"bucket": {"service_account": {**sa, "private_key": "not a key"}}}, "private_key"),
        ({"bucket": GCS}, {"bucket": {"service_account": sa}, "pubsbu": {}}, "pubsbu"),
        ({"pubsub": NATS}, "xy", "secrets must be an object"),
        ({"pubsub": NATS}, [seed], "secrets must be an object"),
        ({"pubsub": {**NATS, "url": 5}}, {"pubsub": {"account_seed": seed}}, "url"),
        ({"pubsub": {**ABLY, "endpoint": {"x": 1}}}, {"pubsub": {"api_key": "app.key:secret"}}, "endpoint"),
        ({"bucket": {**GCS, "endpoint": ["x"]}}, {"bucket": {"service_account": sa}}, "endpoint"),
    ]
    for config, secrets, words in cases:
        name = _name()
        _refused_400(words, owner.client.create_channel, name, config=config, secrets=secrets)
        _absent(owner, name)
    # The well-formed versions are accepted.
    owner.client.create_channel(_name(), config={"pubsub": NATS}, secrets={"pubsub": {"account_seed": seed}})
    owner.client.create_channel(_name(), config={"bucket": GCS}, secrets={"bucket": {"service_account": sa}})
    assert "refused POST /api/user (400 malformed_request)" in hub.log()
    assert "Traceback" not in hub.log() and " 500 " not in hub.log()


def test_ill_typed_secrets_are_refused_on_configure_and_change_nothing(hub, make_actor):
    owner = make_actor("owner")
    name = _name()
    seed = new_seed("account")
    owner.client.create_channel(name, config={"pubsub": NATS}, secrets={"pubsub": {"account_seed": seed}})
    before = owner.client.show_channel(name)
    stored = (hub.dir / "secrets" / f"{name}.json").read_bytes()
    for config, secrets, words in [
        ({"pubsub": NATS}, "xy", "secrets must be an object"),
        ({"pubsub": NATS}, {"pubsub": "x"}, "secrets.pubsub"),
        ({"pubsub": ABLY}, {"pubsub": ["k"]}, "secrets.pubsub"),
        ({"pubsub": NATS, "bucket": GCS}, {"bucket": 1.5}, "secrets.bucket"),
        ("nats", None, "config"),
    ]:
        _refused_400(words, owner.client.configure_channel, name, config, secrets)
    after = owner.client.show_channel(name)
    assert after["config"] == before["config"] and [a for a in after["activity"] if a["kind"] == "config"] == []
    assert (hub.dir / "secrets" / f"{name}.json").read_bytes() == stored
    # An unchanged part keeps its stored secret; the channel still works.
    assert owner.client.configure_channel(name, {"pubsub": NATS})["config"]["pubsub"] == NATS


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12)
backend_names = st.sampled_from(["embedded", "nats", "ably", "gcs", "other"])
configs = json_values | st.fixed_dictionaries({}, optional={
    "pubsub": json_values | st.fixed_dictionaries({"backend": backend_names}, optional={"url": json_values, "endpoint": json_values, "rest_url": json_values}),
    "bucket": json_values | st.fixed_dictionaries({"backend": backend_names}, optional={"bucket": json_values, "endpoint": json_values})})
secret_values = json_values | st.fixed_dictionaries({}, optional={
    "pubsub": json_values | st.fixed_dictionaries({}, optional={"account_seed": json_values | st.just(new_seed("account")),
                                                              "api_key": json_values | st.just("app.key:secret")}),
    "bucket": json_values | st.fixed_dictionaries({}, optional={"service_account": json_values})})


@pytest.fixture(scope="module")
def fuzz_owner(hub):
    owner = Actor(hub.url, "fuzz")
    yield owner
    owner.client.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(config=configs, secrets=secret_values, configure=st.booleans())
def test_arbitrary_json_config_and_secrets_never_give_a_500(hub, fuzz_owner, config, secrets, configure):
    name = _name()
    if configure:
        fuzz_owner.client.create_channel(name)
    kind = "configure_channel" if configure else "create_channel"
    body = make_body(kind, hub.hub_id, time_ms=now_ms(), channel=name, config=config, secrets=secrets)
    r = httpx.post(f"{hub.url}/api/user", content=body, headers=sign_body(fuzz_owner.user_key, "user", body), timeout=30)
    assert r.status_code in (200, 400), (r.status_code, r.text)
    if r.status_code == 400:
        assert r.json()["error"]["code"] == "malformed_request", r.text
        if not configure:
            _absent(fuzz_owner, name)
