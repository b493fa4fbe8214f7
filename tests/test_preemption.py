import os
import signal

from hashjax.preemption import PreemptionGuard


def test_a_request_made_to_an_enclosing_guard_reaches_the_inner_one():
  with PreemptionGuard() as outer:
    os.kill(os.getpid(), signal.SIGTERM)
    assert outer.should_stop(0) and outer.signal_name == 'SIGTERM'
    with PreemptionGuard() as inner:
      assert inner.should_stop(0) and inner.signal_name == 'SIGTERM'
    with PreemptionGuard() as later:  # each inner guard starts from the enclosing request
      assert later.should_stop(3)
  with PreemptionGuard() as fresh:
    assert not fresh.should_stop(0)


def test_old_handlers_come_back_on_exit():
  before = signal.getsignal(signal.SIGTERM)
  with PreemptionGuard():
    assert signal.getsignal(signal.SIGTERM) is not before
  assert signal.getsignal(signal.SIGTERM) is before
