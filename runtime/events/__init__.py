"""Events between services: envelope, registry, transactional outbox, consumers, topics, broker.

Submodules import aiokafka and SQLAlchemy; import what you need from them directly
(`cloudretail.runtime.events.outbox`, `cloudretail.runtime.events.consumer`, ...).
"""
