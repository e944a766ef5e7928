"""The local dev console at the gateway's /_console: the whole running platform on one page.

Served only when `cloudretail up` runs the gateway (it sets GATEWAY_CONSOLE_DATA_DIR; the
generated Kubernetes manifests and compose file never do, and production refuses it).
It shows the spec's architecture diagrams (Mermaid, vendored with the package), each
deployable's health, instances, restarts and log tail (from the supervisor's data dir),
the gateway's circuit breakers and rate limit counters, the event bus's events live and
filtered by correlation id, the kept traces, and an API explorer over the gateway's merged
OpenAPI document (Swagger UI from cloudretail.runtime.docs). Every file is served from
this origin; the page runs no inline script.

Modules: `app` (routes, headers), `stackview` (supervisor state, readiness, logs), `edge`
(breakers, rate limits), `events` (the event bus's admin API), `architecture` (diagrams);
`static/` the page, its script and stylesheet, and `static/vendor/` the Mermaid bundle.
"""

from cloudretail.runtime.console.app import Console

__all__ = ["Console"]
