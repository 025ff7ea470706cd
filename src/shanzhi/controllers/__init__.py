"""Reconcile loops: make what the providers run agree with what the store says.

Level-triggered and idempotent. Each pass reads desired state (apps, instance rows) and
observed state (provider listings, health probes), writes its intent to the store first
(new rows, `terminating` marks), and only then calls providers, whose create and delete are
idempotent by instance name. A crash at any point leaves intent that the next pass finishes,
so there is never a duplicate or an orphan.
"""

from shanzhi.controllers.fleet import Fleet
from shanzhi.controllers.manager import ControllerManager
from shanzhi.controllers.reconciler import Reconciler

__all__ = ["ControllerManager", "Fleet", "Reconciler"]
