"""The playout queue and the pacer's arithmetic: plain numbers, no clock."""

from hypothesis import given
from hypothesis import strategies as st

from media.playout import Pacer, PlayoutQueue
from media.ports import PortPairAllocator, PortsExhausted


def test_queue_hands_out_whole_frames_and_counts_per_item():
    queue = PlayoutQueue(160, max_bytes=10_000)
    queue.push(b"a" * 250, "item1")
    assert queue.pop_frame() == b"a" * 160
    assert queue.pop_frame() is None  # 90 bytes: wait for the next delta, no glitch
    queue.push(b"b" * 70, "item1")
    queue.push(b"c" * 160, "item2")
    assert queue.pop_frame() == b"a" * 90 + b"b" * 70
    assert queue.pop_frame() == b"c" * 160
    assert queue.frames_sent == {"item1": 2, "item2": 1}


@given(st.lists(st.one_of(
    st.tuples(st.just("push"), st.integers(1, 500), st.sampled_from("abc")),
    st.tuples(st.just("pop"), st.just(0), st.just("")),
), max_size=60))
def test_each_frame_counts_for_the_item_it_starts_in(operations):
    """Against a model that tags every byte with its item: the bytes come out in order, and a
    frame counts for the item of its first byte (exact boundaries, frames over 3 items)."""
    queue = PlayoutQueue(160, max_bytes=100_000)
    model: list[tuple[int, str]] = []  # (byte, item), oldest first
    expected: dict[str, int] = {}
    counter = 0
    for operation, size, item in operations:
        if operation == "push":
            data = bytes((counter + n) % 256 for n in range(size))
            counter += size
            queue.push(data, item)
            model += [(byte, item) for byte in data]
            continue
        frame = queue.pop_frame()
        if len(model) < 160:
            assert frame is None
            continue
        head, model = model[:160], model[160:]
        assert frame == bytes(byte for byte, _ in head)
        expected[head[0][1]] = expected.get(head[0][1], 0) + 1
        assert queue.frames_sent == expected
        assert len(queue) == len(model)
        assert all(queue.holds(item) for _, item in model)


def test_finish_item_pads_the_tail_with_silence():
    queue = PlayoutQueue(160, max_bytes=10_000)
    queue.push(b"x" * 100, "i")
    queue.finish_item(0xFF)
    assert queue.pop_frame() == b"x" * 100 + b"\xff" * 60
    assert len(queue) == 0


def test_queue_is_bounded_and_counts_drops():
    queue = PlayoutQueue(160, max_bytes=320)
    queue.push(b"x" * 500, "i")
    assert len(queue) == 320 and queue.bytes_dropped == 180


def test_clear_drops_everything_at_once():
    queue = PlayoutQueue(160, max_bytes=10_000)
    queue.push(b"x" * 1600, "i")
    queue.pop_frame()
    assert queue.clear() == 1440
    assert queue.pop_frame() is None and queue.frames_sent == {"i": 1}


def test_pacer_deadlines_do_not_drift():
    pacer = Pacer(0.02, start=100.0)
    for _ in range(1000):
        # Every wake-up is 3 ms late, yet the deadlines stay on the 20 ms grid.
        pacer.advance(pacer.next_deadline + 0.003)
    assert abs(pacer.next_deadline - (100.0 + 1000 * 0.02)) < 1e-9
    assert pacer.reanchors == 0


def test_pacer_reanchors_after_a_stall_instead_of_bursting():
    pacer = Pacer(0.02, start=0.0)
    assert pacer.advance(0.0) is False
    assert pacer.advance(0.5) is True  # woke 480 ms late
    assert pacer.reanchors == 1
    assert abs(pacer.next_deadline - 0.52) < 1e-9  # one frame later, not 24 frames at once


def test_pacer_skip_to_resumes_on_the_grid_after_a_pause():
    pacer = Pacer(0.02, start=0.0)
    pacer.advance(0.0)  # next: 0.02
    assert pacer.skip_to(0.01) == 0 and pacer.next_deadline == 0.02  # not behind: unchanged
    assert pacer.skip_to(0.09) == 4  # 0.02 to 0.08 were missed; 0.10 is next
    assert abs(pacer.next_deadline - 0.10) < 1e-9
    assert pacer.skip_to(0.16) == 3 and abs(pacer.next_deadline - 0.16) < 1e-9  # due now: kept
    assert pacer.reanchors == 0


def test_port_pairs_even_unique_and_exhausted():
    ports = PortPairAllocator(30001, 30010)  # pairs 30002..30008 (30009 is the last RTCP)
    taken = {ports.allocate() for _ in range(ports.capacity)}
    assert taken == {30002, 30004, 30006, 30008}
    try:
        ports.allocate()
        raise AssertionError("allocated past the range")
    except PortsExhausted:
        pass
    ports.release(30004)
    assert ports.allocate() == 30004


def test_port_churn_never_hands_out_a_held_pair():
    ports = PortPairAllocator(40000, 40019)
    held: set[int] = set()
    for n in range(5000):
        if len(held) == ports.capacity or (held and n % 3 == 0):
            ports.release(held.pop())
        port = ports.allocate()
        assert port not in held and port % 2 == 0 and 40000 <= port <= 40018
        held.add(port)


def test_the_items_remembered_are_bounded_and_the_newest_are_kept():
    """Item ids come from the server: a long call, or a server inventing ids, must not grow
    the per-item count for ever; the items barge-in can still ask about are the newest."""
    from media.playout import ITEMS_REMEMBERED

    queue = PlayoutQueue(160, max_bytes=1 << 20)
    for n in range(ITEMS_REMEMBERED + 50):
        queue.push(b"\xff" * 320, f"item-{n}")
        assert queue.pop_frame() is not None and queue.pop_frame() is not None
    assert len(queue.frames_sent) == ITEMS_REMEMBERED
    assert queue.frames_sent_of(f"item-{ITEMS_REMEMBERED + 49}") == 2
    assert queue.frames_sent_of("item-0") == 0  # forgotten: long settled
