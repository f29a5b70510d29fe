"""The shared vendor request loop (connectors/http.py): verdicts, the retry policy, renewal,
counting. Sleep and jitter are injected: nothing here waits."""

from __future__ import annotations

import pytest

from crm_elasticity.connectors.base import AuthError, CallStats, ConnectorError, QuotaExhausted
from crm_elasticity.connectors.http import RetryPolicy, VendorHttp, Verdict, backoff_delay


class Boom(Exception):
    pass


def make(attempts: int = 4, **kw) -> tuple[VendorHttp, list[float]]:
    slept: list[float] = []
    policy = RetryPolicy(attempts, base=0.5, cap=3.0, sleep=slept.append, jitter=lambda: 0.5)
    return VendorHttp(policy, CallStats(), **kw), slept


def failing(*answers):
    """A `send` that raises each of `answers` in turn (an exception) or returns it."""
    queue = list(answers)
    sent = []

    def send():
        sent.append(1)
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    send.sent = sent
    return send


def by_message(verdicts):
    return lambda exc: verdicts.get(str(exc))


def test_retries_with_capped_jittered_exponential_backoff_then_succeeds():
    http, slept = make()
    send = failing(Boom("5xx"), Boom("5xx"), Boom("5xx"), "ok")
    result = http.call("read", send, by_message({"5xx": Verdict.retry("HTTP 503")}))
    assert result == "ok"
    # 0.5, 1, 2 (under the cap of 3), each scaled by the jitter into [50%, 100%): 0.75 here.
    assert slept == [0.375, 0.75, 1.5]
    assert http.calls == CallStats(api_calls=0, retries=3, throttled=0)


def test_a_named_wait_is_used_as_is_up_to_the_cap():
    http, slept = make()
    send = failing(Boom("a"), Boom("b"), "ok")
    verdicts = {"a": Verdict.throttle("429", wait=2.0), "b": Verdict.retry("423", wait=60.0)}
    assert http.call("read", send, by_message(verdicts)) == "ok"
    assert slept == [2.0, 3.0]
    assert http.calls.throttled == 1 and http.calls.retries == 2


def test_a_verdict_can_back_off_longer_than_the_policy():
    http, slept = make()
    send = failing(Boom("t"), Boom("t"), "ok")
    http.call("read", send, by_message({"t": Verdict.throttle("busy", base=5.0, cap=120.0)}))
    assert slept == [3.75, 7.5]


def test_gives_up_after_the_attempts_with_the_last_reason():
    http, slept = make(attempts=3)
    send = failing(*[Boom("5xx")] * 3)
    with pytest.raises(ConnectorError, match="read: gave up after 3 attempts: HTTP 503") as caught:
        http.call("read", send, by_message({"5xx": Verdict.retry("HTTP 503")}))
    assert caught.value.retriable
    assert len(send.sent) == 3 and len(slept) == 2


def test_a_vendor_names_its_own_give_up_error():
    class VendorError(ConnectorError):
        pass

    http, _ = make(attempts=2, give_up=lambda what, n, v: VendorError(f"{what} x{n} {v.reason}"))
    with pytest.raises(VendorError, match="read x2 down"):
        http.call("read", failing(Boom("e"), Boom("e")), by_message({"e": Verdict.retry("down")}))


def test_fatal_and_quota_raise_the_vendors_error_without_retrying():
    http, slept = make()
    refused = ConnectorError("read: HTTP 400 bad field")
    with pytest.raises(ConnectorError, match="bad field") as caught:
        http.call("read", failing(Boom("x")), by_message({"x": Verdict.fatal(refused)}))
    assert caught.value.__suppress_context__  # the SDK's exception (headers, body) stays out
    spent = QuotaExhausted("daily allowance spent")
    with pytest.raises(QuotaExhausted):
        http.call(
            "read", failing(Boom("q")), by_message({"q": Verdict.quota(spent, throttled=True)})
        )
    assert slept == [] and http.calls.retries == 0 and http.calls.throttled == 1


def test_an_exception_the_vendor_does_not_classify_propagates_unchanged():
    http, _ = make()
    with pytest.raises(KeyError):
        http.call("read", failing(KeyError("k")), lambda exc: None)


def test_expired_credentials_are_renewed_once_per_attempt_then_refused():
    renewals = []
    http, slept = make()
    expired = Verdict.expired(AuthError("session refused after a fresh grant"))
    send = failing(Boom("exp"), "ok")
    assert (
        http.call("read", send, by_message({"exp": expired}), renew=lambda: renewals.append(1))
        == "ok"
    )
    assert renewals == [1] and slept == []  # renewed and sent again at once, no retry counted

    send = failing(Boom("exp"), Boom("exp"))
    with pytest.raises(AuthError, match="fresh grant"):
        http.call("read", send, by_message({"exp": expired}), renew=lambda: renewals.append(1))
    assert renewals == [1, 1]  # one renewal, not a loop
    with pytest.raises(AuthError):  # no way to renew: the call ends
        http.call("read", failing(Boom("exp")), by_message({"exp": expired}))


def test_the_limit_check_runs_before_every_request_and_stops_the_call():
    checks = []
    allowance = {"left": 2}

    def check():
        checks.append(1)
        if allowance["left"] == 0:
            raise QuotaExhausted("reserve reached")
        allowance["left"] -= 1

    http, _ = make(check_limits=check)
    send = failing(Boom("5xx"), "ok")
    assert http.call("read", send, by_message({"5xx": Verdict.retry("HTTP 503")})) == "ok"
    assert len(checks) == 2
    with pytest.raises(QuotaExhausted):
        http.call("read", failing("never sent"), lambda exc: None)


def test_pause_counts_a_retry_and_sleeps_on_the_injected_sleep():
    http, slept = make()
    http.pause(backoff_delay(3, base=0.5, cap=10.0))
    assert slept == [2.0] and http.calls.retries == 1


def test_backoff_delay_is_capped_and_jittered_into_the_upper_half():
    assert [backoff_delay(n, base=1.0, cap=30.0) for n in (1, 2, 5, 6, 9)] == [1, 2, 16, 30, 30]
    assert backoff_delay(2, base=1.0, cap=30.0, jitter=0.0) == 1.0
    assert backoff_delay(2, base=1.0, cap=30.0, jitter=0.999) < 2.0


def test_call_stats_subtract_to_one_runs_share_and_add_across_connectors():
    calls = CallStats(api_calls=10, retries=2, throttled=1)
    before = calls.snapshot()
    calls.count("api_calls", 5)
    calls.count("throttled")
    assert calls - before == CallStats(api_calls=5, retries=0, throttled=1)
    assert before == CallStats(10, 2, 1)  # a snapshot does not move with the counters
    assert before + calls == CallStats(25, 4, 3)
