"""swarmnode's wire protocol, sans-IO: bytes in, typed messages out, bytes handed back.

Nothing here does I/O, reads a clock or draws randomness of its own; keys, nonces and time are
arguments. Nothing here imports from ``swarmnode`` (a test enforces it). The specification is
``protocol/SPEC.md``.
"""
