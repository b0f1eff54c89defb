"""SimpleBank: the investment bank of *Microservices in Action*, on aiochassis.

Every service is a :class:`chassis.Service` in its own module; the contract between
them is ``docs/simplebank/design.md``. :mod:`simplebank.services` builds and runs
them together; :mod:`simplebank.exchange` is the stand-in for the external exchange.
"""

from .common import VERSION as __version__

__all__ = ["__version__"]
