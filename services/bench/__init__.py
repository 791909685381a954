"""`switchboard bench`: measure a Switchboard cluster (fan-out, idle memory, streaming, connect storms).

The parent process (`scenarios.py`) owns the cluster it may start, the worker processes and the
report; the workers (`loadgen.py`) hold the WebSocket clients (picows on uvloop, imported lazily:
they are the optional `bench` dependency group).
"""
