"""runtime.wire and runtime.messages: typed messages over one socket pair, fds riding along."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiotrain.runtime.messages import Call, FromWorker, Reply, ToWorker, pickled, unpickled
from aiotrain.runtime.wire import INLINE_MAX, Wire, WireError


@pytest.fixture
def pair():
    a, b = Wire.socketpair()
    left, right = Wire(a, FromWorker), Wire(b, ToWorker)
    yield left, right
    left.close()
    right.close()


@settings(max_examples=25, deadline=None)
@given(size=st.sampled_from([0, 1, INLINE_MAX - 64, INLINE_MAX, INLINE_MAX + 1, 3 * INLINE_MAX]),
       call_id=st.integers(0, 2**62))
def test_messages_arrive_whole_and_typed_inline_or_as_a_memfd(size, call_id):
    a, b = Wire.socketpair()
    sender, receiver = Wire(a, FromWorker), Wire(b, ToWorker)
    try:
        body = pickled(os.urandom(size))
        sender.send(Call(call_id, body))
        msg, fds = receiver.recv()
        assert msg == Call(call_id, body) and fds == []
        assert receiver.recv(block=False) is None  # nothing else came, no memfd left over
    finally:
        sender.close()
        receiver.close()


def test_file_descriptors_ride_along_with_a_message(pair):
    left, right = pair
    r, w = os.pipe()
    try:
        right.send(Reply(7, pickled({"x": 1})), [w])
        msg, fds = left.recv()
        assert isinstance(msg, Reply) and unpickled(msg.body) == {"x": 1} and len(fds) == 1
        os.write(fds[0], b"through the passed fd")
        os.close(fds[0])
        assert os.read(r, 100) == b"through the passed fd"
    finally:
        os.close(r)
        os.close(w)


def test_a_message_its_receiver_does_not_expect_is_refused(pair):
    left, right = pair
    left.send(Reply(1, b""))  # a reply sent to the worker's side: not a kind it receives
    with pytest.raises(WireError, match="unreadable message"):
        right.recv()


def test_eof_when_the_peer_closes(pair):
    left, right = pair
    left.close()
    with pytest.raises(EOFError):
        right.recv()
