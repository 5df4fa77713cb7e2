"""The reconnect cue's G.711: checked against the fake server's independent encoder."""

from media.rtp import SILENCE_BYTE
from media.tones import alaw_from_linear, reconnect_cue, ulaw_from_linear
from tests.fakes import realtime


def test_g711_encoders_agree_with_the_reference_over_the_whole_range():
    for sample in range(-32768, 32768, 7):
        assert ulaw_from_linear(sample) == realtime.ulaw_from_linear(sample), sample
        assert alaw_from_linear(sample) == realtime.alaw_from_linear(sample), sample


def test_the_cue_is_whole_frames_of_two_beeps_with_silence_between():
    for codec in ("PCMU", "PCMA"):
        cue = reconnect_cue(codec)
        assert len(cue) == 300 * 8 and len(cue) % 160 == 0
        gap = cue[800:1600]
        assert gap == bytes((SILENCE_BYTE[codec],)) * 800
        assert len(set(cue[:800])) > 10 and cue[:800] == cue[1600:]
