"""The child side of the concurrent-promotion test, in a module of its own: a `spawn` child imports the
module its target lives in, and this one imports only the registry (the test module pulls in torch and
transformers, ~2 s per child)."""

from tuneloop import registry


def promote(tag, barrier):
    barrier.wait()
    registry.promote(tag, reason="race")
