"""The service's settings: every chassis setting, plus its own.

Read from the environment (and a ``.env`` file) when the service starts, never at
import. A field ``low_stock_threshold`` is set by ``CHASSIS_LOW_STOCK_THRESHOLD``;
the chassis' own sections keep their names (``CHASSIS_HTTP__PORT``, ...).
"""

from chassis import ChassisSettings
from pydantic import Field


class Settings(ChassisSettings):
    """The settings of {{ cookiecutter.service_name }}."""

    low_stock_threshold: int = Field(default=5, ge=0)
    """Items with fewer units than this in stock are reported as ``low_stock``."""
