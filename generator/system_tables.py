"""Tables the platform adds to service databases by itself (the event machinery's).

They are written as spec tables so they travel the same road as the user's: models,
migrations, docs. `runtime/events/tables.py` queries them; the two definitions must agree,
which the event tests check against migrated databases.
"""

from __future__ import annotations

from cloudretail.generator.spec import ColumnSpec, IndexSpec, TableSpec

OUTBOX = TableSpec(
    description="Events waiting to be published, written in the same transaction as the "
    "state change they describe (transactional outbox).",
    columns={
        "seq": ColumnSpec(type="integer", primary_key=True),
        "event_id": ColumnSpec(type="uuid", nullable=False, unique=True),
        "topic": ColumnSpec(type="string", length=255, nullable=False),
        "message_key": ColumnSpec(type="string", length=255, nullable=False),
        "event_type": ColumnSpec(type="string", length=255, nullable=False),
        "payload": ColumnSpec(type="text", nullable=False),
        "created_at": ColumnSpec(type="timestamp", default="now", nullable=False),
        "sent_at": ColumnSpec(type="timestamp"),
        "attempts": ColumnSpec(type="integer", default=0, nullable=False),
        "last_error": ColumnSpec(type="text"),
    },
    indexes=[IndexSpec(name="idx_outbox_unsent", columns=["sent_at", "seq"])],
)

PROCESSED_EVENTS = TableSpec(
    description="Ids of consumed events already applied, so a redelivered event is applied once.",
    columns={
        "event_id": ColumnSpec(type="uuid", primary_key=True),
        "event_type": ColumnSpec(type="string", length=255, nullable=False),
        "processed_at": ColumnSpec(type="timestamp", default="now", nullable=False),
    },
)

AUDIT_LOG = TableSpec(
    description="Every event seen on any topic, as it arrived (the event bus's audit log).",
    columns={
        "event_id": ColumnSpec(type="uuid", primary_key=True),
        "event_type": ColumnSpec(type="string", length=255, nullable=False),
        "topic": ColumnSpec(type="string", length=255, nullable=False),
        "service": ColumnSpec(type="string", length=100, nullable=False),
        "correlation_id": ColumnSpec(type="string", length=255, nullable=False),
        "causation_id": ColumnSpec(type="string", length=255),
        "user_id": ColumnSpec(type="string", length=255),
        "occurred_at": ColumnSpec(type="timestamp", nullable=False),
        "recorded_at": ColumnSpec(type="timestamp", default="now", nullable=False),
        "envelope": ColumnSpec(type="text", nullable=False),
    },
    indexes=[
        IndexSpec(name="idx_audit_log_event_type", columns=["event_type"]),
        IndexSpec(name="idx_audit_log_correlation_id", columns=["correlation_id"]),
        IndexSpec(name="idx_audit_log_occurred_at", columns=["occurred_at"]),
    ],
)

SAGA_INSTANCES = TableSpec(
    description="State of each running saga, so a crash mid-way is finished on restart.",
    columns={
        "id": ColumnSpec(type="uuid", primary_key=True),
        "saga": ColumnSpec(type="string", length=100, nullable=False),
        "status": ColumnSpec(type="string", length=20, nullable=False),
        "step": ColumnSpec(type="integer", nullable=False),
        "data": ColumnSpec(type="text", nullable=False),
        "error": ColumnSpec(type="text"),
        "deadline": ColumnSpec(type="timestamp", nullable=False),
        "created_at": ColumnSpec(type="timestamp", default="now", nullable=False),
        "updated_at": ColumnSpec(type="timestamp", default="now", nullable=False),
    },
    indexes=[IndexSpec(name="idx_saga_instances_status", columns=["status", "updated_at"])],
)

MAIL_OUTBOX = TableSpec(
    description="Mails waiting to be sent, written in the transaction that decided to send "
    "them; `message_key` makes queuing the same mail twice a no-op.",
    columns={
        "seq": ColumnSpec(type="integer", primary_key=True),
        "message_key": ColumnSpec(type="string", length=255, nullable=False, unique=True),
        "recipient": ColumnSpec(type="string", length=320, nullable=False),
        "subject": ColumnSpec(type="string", length=255, nullable=False),
        "body": ColumnSpec(type="text", nullable=False),
        "created_at": ColumnSpec(type="timestamp", default="now", nullable=False),
        "sent_at": ColumnSpec(type="timestamp"),
        "attempts": ColumnSpec(type="integer", default=0, nullable=False),
        "next_attempt_at": ColumnSpec(type="timestamp"),
        "last_error": ColumnSpec(type="text"),
    },
    indexes=[IndexSpec(name="idx_mail_outbox_unsent", columns=["sent_at", "seq"])],
)

SYSTEM_TABLES = {
    "outbox": OUTBOX,
    "processed_events": PROCESSED_EVENTS,
    "saga_instances": SAGA_INSTANCES,
    "audit_log": AUDIT_LOG,
    "mail_outbox": MAIL_OUTBOX,
}
