"""faust's aiokafka transport with an idempotent producer (``talkstream://`` broker URLs).

faust turns idempotence on only inside its (broken, DESIGN.md §4) exactly-once transactions.
The worker's producer writes every decision (commands, lifecycle events, the table's
changelog) and retries sends after a broker bounce; without idempotence a retried batch can
land twice. Registered under the ``faust.transports`` entry point in pyproject.toml.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from faust.transport.drivers import aiokafka as driver


class Producer(driver.Producer):
    def _settings_extra(self) -> Mapping[str, Any]:
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}


class Transport(driver.Transport):
    Producer = Producer
