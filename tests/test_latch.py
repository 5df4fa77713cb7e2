"""The latch policy alone (media/latch.py): symmetric RTP and the RTP Bleed defences, sans-IO.

Time is an argument, so every case is a plain sequence of ``accept(source, now)`` calls.
Addresses are RFC 5737 (and RFC 3849) documentation addresses. The stream's side (counters,
where RTP goes, media started) is in test_stream.py.
"""

from __future__ import annotations

import pytest

from media.latch import RELATCH_SILENCE, LatchPolicy, Relatch, Verdict, same_endpoint

CALLER = ("192.0.2.10", 40000)  # what the SDP says
NAT = ("198.51.100.7", 61000)  # where the caller's packets really come from
ATTACKER = ("203.0.113.66", 5060)


def test_the_first_valid_packet_latches_from_anywhere_then_strangers_are_foreign():
    latch = LatchPolicy(CALLER)
    assert latch.accept(NAT, 1.0) is Verdict.FIRST and latch.latched == NAT
    assert latch.accept(NAT, 1.02, 1.0) is Verdict.LATCHED
    assert latch.accept(ATTACKER, 1.04, 1.02) is Verdict.FOREIGN  # RTP Bleed
    assert latch.latched == NAT


@pytest.mark.parametrize("policy", [Relatch.SDP, Relatch.SILENCE])
def test_the_sdp_address_may_take_over_a_nat_latch(policy):
    latch = LatchPolicy(CALLER, relatch=policy)
    latch.accept(NAT, 1.0)
    assert latch.accept(CALLER, 1.02, 1.0) is Verdict.MOVED and latch.latched == CALLER


def test_never_holds_the_first_source_even_against_the_sdp_address():
    latch = LatchPolicy(CALLER, relatch=Relatch.NEVER)
    latch.accept(NAT, 1.0)
    assert latch.accept(CALLER, 100.0, 1.0) is Verdict.FOREIGN and latch.latched == NAT


def test_silence_lets_a_stranger_in_only_after_the_latched_source_went_quiet():
    latch = LatchPolicy(CALLER, relatch=Relatch.SILENCE)
    latch.accept(NAT, 10.0)
    assert latch.accept(ATTACKER, 11.0, 10.0) is Verdict.FOREIGN  # racing a live stream
    quiet = 10.0 + RELATCH_SILENCE
    assert latch.accept(ATTACKER, quiet - 0.001, 10.0) is Verdict.FOREIGN
    assert latch.accept(ATTACKER, quiet, 10.0) is Verdict.MOVED  # a NAT rebinding
    assert latch.latched == ATTACKER


def test_sdp_policy_never_lets_a_stranger_in_however_quiet():
    latch = LatchPolicy(CALLER)
    latch.accept(NAT, 0.0)
    assert latch.accept(ATTACKER, 3600.0, 0.0) is Verdict.FOREIGN


def test_strict_source_accepts_only_the_sdp_endpoint_even_first():
    latch = LatchPolicy(CALLER, strict_source=True)
    assert latch.accept(NAT, 1.0) is Verdict.FOREIGN and latch.latched is None
    assert latch.accept((CALLER[0], CALLER[1] + 2), 1.0) is Verdict.FOREIGN  # same host
    assert latch.accept(CALLER, 1.0) is Verdict.FIRST


@pytest.mark.parametrize("strict, first", [(False, Verdict.FIRST), (True, Verdict.FOREIGN)])
def test_no_usable_sdp_address_latches_from_anyone_unless_strict(strict, first):
    # c=0.0.0.0 with sendrecv (an address not known yet), or a host name in c=: no SDP address.
    latch = LatchPolicy(None, strict_source=strict)
    assert latch.accept(NAT, 1.0) is first


def test_a_reoffer_that_moves_the_media_unlatches_unless_never_holds_it():
    moved = ("192.0.2.20", 42000)
    latch = LatchPolicy(CALLER)
    latch.accept(NAT, 1.0)
    assert latch.sdp_changed(CALLER) is False and latch.latched == NAT  # the same SDP again
    assert latch.sdp_changed(moved) is True and latch.latched is None
    assert latch.accept(moved, 2.0) is Verdict.FIRST

    held = LatchPolicy(CALLER, relatch=Relatch.NEVER)
    held.accept(NAT, 1.0)
    assert held.sdp_changed(moved) is False and held.latched == NAT
    assert held.sdp_remote == moved


def test_a_reoffer_without_an_address_moves_nothing():
    latch = LatchPolicy(None)
    latch.accept(NAT, 1.0)
    assert latch.sdp_changed(None) is False and latch.latched == NAT  # still 0.0.0.0
    assert latch.sdp_changed(CALLER) is True  # the gateway learnt its address


def test_rtcp_only_from_the_latched_host_or_before_latching_the_sdp_host():
    latch = LatchPolicy(CALLER)
    assert latch.rtcp_source_ok((CALLER[0], 40001))
    assert not latch.rtcp_source_ok((NAT[0], 61001))
    latch.accept(NAT, 1.0)
    assert latch.rtcp_source_ok((NAT[0], 9))  # any port: the NAT picks its own
    assert not latch.rtcp_source_ok((CALLER[0], 40001))
    assert not latch.rtcp_source_ok(ATTACKER)
    assert not LatchPolicy(None).rtcp_source_ok(NAT)  # nobody to expect yet


def test_endpoints_compare_by_address_not_spelling():
    assert same_endpoint(("2001:DB8::10", 40000), ("2001:db8::10", 40000))
    assert same_endpoint(("::ffff:192.0.2.10", 40000), CALLER)
    assert not same_endpoint(("192.0.2.10", 40002), CALLER)
    assert not same_endpoint(("pbx.example.com", 40000), CALLER)  # never resolved
    assert same_endpoint(("pbx.example.com", 40000), ("pbx.example.com", 40000))
    assert not same_endpoint(None, CALLER)
    latch = LatchPolicy(("2001:DB8::10", 40000), strict_source=True)
    assert latch.accept(("2001:db8::10", 40000), 1.0) is Verdict.FIRST
