"""The coded bulk path for `replay` and `simulate`: the same rules as `core.engine`, run on
integer codes and epoch-microsecond times, with decisions kept as integer rows.

`core.engine` stays the reference; a property test drives both with the same streams and
requires the same final states and (decoded) ledgers.
"""
