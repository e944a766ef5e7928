"""What `cloudretail up` runs, as typed data: the generator plans it from the spec, the
supervisor (possibly another process, reading `stack.json`) runs it."""

from __future__ import annotations

from cloudretail.runtime.events.topics import TopicSpec
from pydantic import BaseModel, ConfigDict


class _Plan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BrokerAddress(_Plan):
    host: str
    port: int


class MailSinkPlan(_Plan):
    """The local SMTP server mail-sending services deliver to; mails land in `directory`."""

    host: str
    port: int
    directory: str


class PlannedProcess(_Plan):
    name: str  # unique in the plan: the deployable's name, `<name>-<n>` for its n-th instance
    kind: str  # service | event-bus | gateway: the order they stop in
    command: tuple[str, ...]  # arguments after the Python interpreter
    port: int
    env: dict[str, str]
    docs: str
    # The deployable this process is an instance of (`up --scale` runs several): the
    # handlers it runs, the gateway upstream it sits behind. Empty: the process's own name.
    deployable: str = ""

    @property
    def of(self) -> str:
        return self.deployable or self.name


class PlannedDatabase(_Plan):
    name: str
    ini: str
    url: str


class PlannedTopic(_Plan):
    name: str
    partitions: int
    replication: int  # the spec's; one local broker takes 1
    config: dict[str, str]

    def spec(self, *, replication: int | None = None) -> TopicSpec:
        return TopicSpec(self.name, self.partitions, replication or self.replication, self.config)


class StackPlan(_Plan):
    platform: str  # the spec's platform name: default names derive from it
    data_dir: str
    broker: BrokerAddress | None  # None: an outside Kafka at `bootstrap`
    bootstrap: str
    redis_url: str | None
    processes: tuple[PlannedProcess, ...]
    databases: tuple[PlannedDatabase, ...]
    topics: tuple[PlannedTopic, ...]
    gateway: str
    token_issuer: str | None
    mail_sink: MailSinkPlan | None = None
