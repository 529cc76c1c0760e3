"""pipelines.resources._interrupts_held: the cleanup after a stopped stage ignores SIGINT and
SIGTERM, and must never leave them ignored: an ignored signal survives exec, so every process
the step starts afterwards (dvc, byol, a UI) could no longer be stopped."""

import signal

from pipelines import resources


def test_handlers_installed_from_python_come_back():
    def handler(signum, frame):
        pass

    before = signal.signal(signal.SIGTERM, handler)
    interrupt = signal.signal(signal.SIGINT, signal.default_int_handler)  # whatever the test run inherited
    try:
        with resources._interrupts_held():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is handler
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, before)
        signal.signal(signal.SIGINT, interrupt)


def test_a_handler_python_did_not_install_gives_way_to_the_default_not_to_ignoring(monkeypatch):
    """signal.signal returns None for a handler set from C; it cannot be put back, and the
    block must not leave the signal ignored."""
    real = signal.signal
    calls = []

    def from_c(signum, handler):
        previous = real(signum, handler)
        calls.append((signum, handler))
        return None if len(calls) <= 2 else previous  # the two swaps in: "not set from Python"

    monkeypatch.setattr(signal, "signal", from_c)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with resources._interrupts_held():
            pass
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL
    finally:
        for signum, handler in before.items():
            real(signum, handler)
