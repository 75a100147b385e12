"""The small error hierarchy every fedrec component raises.

Callers catch ``FedrecError`` at the boundary (CLI, Flower handlers, HTTP) and turn it into a clear message
or an error reply; nothing below the boundary prints or exits.
"""

from __future__ import annotations


class FedrecError(Exception):
    """Base class: a problem the user can act on (bad input, wrong config, exhausted budget)."""


class ConfigError(FedrecError):
    """A configuration key has a missing or invalid value; the message names the key and the value."""


class DataError(FedrecError):
    """Input data is malformed; the message names the file and, where known, the line or row."""


class CatalogMismatchError(FedrecError):
    """A catalog or model was built against a different item vocabulary (content hashes differ)."""


class IncompatibleModelError(FedrecError):
    """A model file does not match the expected kind, shape or catalog."""


class BudgetExhaustedError(FedrecError):
    """Training would push the store's accounted epsilon past its budget."""


class AggregationError(FedrecError):
    """A federated round could not be aggregated (too few stores, malformed updates)."""
