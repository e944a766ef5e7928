"""Events between services: envelope, registry, transactional outbox, consumers, topics, broker.

Submodules import aiokafka and SQLAlchemy; import what you need from them directly
(`runtime.events.outbox`, `runtime.events.consumer`, ...).
"""
