"""The investigators' cases beyond the store: what a study would cost if it were fabricated.

The queue itself (cases, history, labels) is :mod:`plugin.store.cases`; this package holds
the pure domain logic around it, reading the connectors' domain objects.
"""

from plugin.cases.cost import BILLED_FACTOR, MODALITY_WEIGHTS, CostWeight, cost_weight

__all__ = ["BILLED_FACTOR", "MODALITY_WEIGHTS", "CostWeight", "cost_weight"]
