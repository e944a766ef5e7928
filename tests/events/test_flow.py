"""The shared event-flow cases, bound to each transport and database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from cloudretail.runtime.events.broker import EmbeddedBroker

from tests.events.base import EventFlowCases
from tests.events.conftest import DatabaseFactory
from tests.events.support import MemoryHarness, TansuHarness


class TestMemoryBusOnSqlite(EventFlowCases):
    @pytest.fixture
    def harness(self) -> MemoryHarness:
        return MemoryHarness()

    @pytest.fixture
    def databases(self, sqlite_databases: DatabaseFactory) -> DatabaseFactory:
        return sqlite_databases


class TestMemoryBusOnPostgres(EventFlowCases):
    @pytest.fixture
    def harness(self) -> MemoryHarness:
        return MemoryHarness()

    @pytest.fixture
    def databases(self, postgres_databases: DatabaseFactory) -> DatabaseFactory:
        return postgres_databases


class TestTansuOnSqlite(EventFlowCases):
    @pytest.fixture
    async def harness(self, embedded_broker: EmbeddedBroker) -> AsyncIterator[TansuHarness]:
        harness = TansuHarness(embedded_broker)
        yield harness
        await harness.close()

    @pytest.fixture
    def databases(self, sqlite_databases: DatabaseFactory) -> DatabaseFactory:
        return sqlite_databases


class TestTansuOnPostgres:
    """The cases where the database's behaviour matters most, on the real broker too."""

    test_broker_outage_fails_no_write_and_loses_no_event = (
        EventFlowCases.test_broker_outage_fails_no_write_and_loses_no_event
    )
    test_offset_is_committed_only_after_the_handler_transaction = (
        EventFlowCases.test_offset_is_committed_only_after_the_handler_transaction
    )
    test_causation_and_correlation_flow_into_events_a_handler_publishes = (
        EventFlowCases.test_causation_and_correlation_flow_into_events_a_handler_publishes
    )

    @pytest.fixture
    async def harness(self, embedded_broker: EmbeddedBroker) -> AsyncIterator[TansuHarness]:
        harness = TansuHarness(embedded_broker)
        yield harness
        await harness.close()

    @pytest.fixture
    def databases(self, postgres_databases: DatabaseFactory) -> DatabaseFactory:
        return postgres_databases
