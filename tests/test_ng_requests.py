"""The typed requests (ctl/ng_requests.py): each command family's keys read once, with
rtpengine's reasons, in the order the handlers have always read them."""

from __future__ import annotations

import pytest

from ctl.ng import NgError, NgRequest
from ctl.ng_requests import (
    MAX_DELETE_DELAY,
    AnswerRequest,
    CallSelector,
    DeleteRequest,
    ListRequest,
    OfferRequest,
)


def reason(parse, params):
    with pytest.raises(NgError) as caught:
        parse(NgRequest("x", params))
    return caught.value.reason


def test_offer_reads_ids_sdp_profile_and_both_codec_spellings():
    request = NgRequest("offer", {"call-id": "c", "from-tag": "f", "sdp": "v=0", "to-tag": 7,
                                  "profile": "sales", "codec": {"strip": ["pcma"]}},
                        flags=frozenset({"codec-mask-g722"}))
    offer = OfferRequest.parse(request)
    assert (offer.call_id, offer.from_tag, offer.sdp, offer.branch, offer.to_tag) == (
        "c", "f", "v=0", "", "7")
    assert offer.profile == "sales"
    assert offer.excluded_codecs == {"PCMA", "G722"}


def test_offer_errors_come_in_the_handlers_order():
    assert reason(OfferRequest.parse, {}) == "No call-id in message"
    assert reason(OfferRequest.parse, {"call-id": "c"}) == "No from-tag in message"
    assert reason(OfferRequest.parse, {"call-id": "c", "from-tag": "f"}) == "No SDP body in message"


def test_answer_wants_its_tags_before_the_call_id():
    assert reason(AnswerRequest.parse, {}) == "No from-tag in message"
    assert reason(AnswerRequest.parse, {"from-tag": "f"}) == "No to-tag in message"
    assert reason(AnswerRequest.parse, {"from-tag": "f", "to-tag": "t"}) == "No call-id in message"
    answer = AnswerRequest.parse(NgRequest("answer", {"call-id": "c", "from-tag": "f",
                                                      "to-tag": "t", "via-branch": "b"}))
    assert answer.select == CallSelector("c", "b", "f", "t") and answer.to_tag == "t"


@pytest.mark.parametrize(("delay", "expected", "warning"), [
    (None, 0, None), ("5", 5, None), (-3, -3, None), (MAX_DELETE_DELAY, MAX_DELETE_DELAY, None),
    (10**6, MAX_DELETE_DELAY, f"delete-delay cut to {MAX_DELETE_DELAY} s"),
])
def test_delete_delay_is_read_once_and_clamped(delay, expected, warning):
    params = {"call-id": "c"} | ({} if delay is None else {"delete-delay": delay})
    delete = DeleteRequest.parse(NgRequest("delete", params, flags=frozenset({"fatal"})))
    assert (delete.delay, delete.warning, delete.fatal) == (expected, warning, True)


def test_list_limit_defaults_to_rtpengines_and_never_goes_negative():
    assert ListRequest.parse(NgRequest("list", {})).limit == 32
    assert ListRequest.parse(NgRequest("list", {"limit": "-4"})).limit == 0
    assert reason(ListRequest.parse, {"limit": "many"}) == "Invalid integer for key 'limit'"
