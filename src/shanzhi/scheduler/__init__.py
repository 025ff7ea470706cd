"""Placement: choose a cloud and host for each replica, and say why.

Pure functions over plain data (no store, no providers), so the controllers, the API's
dry-runs and the benchmarks share one implementation and the property tests can drive it
directly. Filters remove candidates with a stated reason; scores rank the rest.
"""

from shanzhi.scheduler.core import Decision, HostState, Replica, Request, place

__all__ = ["Decision", "HostState", "Replica", "Request", "place"]
