"""The public edge: the gateway's Ingress and the ingress-nginx settings it relies on.

With ingress-nginx the TLS versions are a controller setting: `ssl_protocols` is written at
nginx's `http` level from the controller's ConfigMap (`ssl-protocols`), and no Ingress
annotation sets it (a server snippet could, but snippets are off by default and unsafe in a
shared controller). HSTS is the controller's too (`hsts*` keys); the controller replaces the
header the gateway sends, so both say the same. The platform team applies these settings
(`generated/k8s/ingress-nginx/`); the Ingress itself asks for the redirect to HTTPS.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloudretail.generator.render import OutputFile
from cloudretail.generator.targets.deploy import Deployment
from cloudretail.generator.targets.k8s_views import Meta, Pairs

FOLDER = "k8s/ingress-nginx"
TLS_PROTOCOLS = "TLSv1.3"
# The gateway's own Strict-Transport-Security (runtime/gateway/headers.py): a year, with
# subdomains, not preloaded.
HSTS_MAX_AGE = 31_536_000
HSTS_INCLUDE_SUBDOMAINS = True
HSTS_PRELOAD = False
ANNOTATION = "nginx.ingress.kubernetes.io/"
# What each controller setting is for (the README's table).
WHY = {
    "hsts": "browsers keep to HTTPS once they have seen the domain",
    "hsts-include-subdomains": "and so do its subdomains",
    "hsts-max-age": "for a year",
    "hsts-preload": "not in the browsers' preload lists: that is the domain owner's choice",
    "ssl-protocols": "TLS 1.3 only (the controller's default also allows TLS 1.2)",
    "ssl-redirect": "plain HTTP is redirected to HTTPS wherever an Ingress has TLS",
}


def _flag(value: bool) -> str:
    return "true" if value else "false"


def controller_settings() -> Pairs:
    """The controller ConfigMap's keys the platform needs, sorted; every value a string."""
    return (
        ("hsts", "true"),
        ("hsts-include-subdomains", _flag(HSTS_INCLUDE_SUBDOMAINS)),
        ("hsts-max-age", str(HSTS_MAX_AGE)),
        ("hsts-preload", _flag(HSTS_PRELOAD)),
        ("ssl-protocols", TLS_PROTOCOLS),
        ("ssl-redirect", "true"),
    )


def ingress_annotations() -> Pairs:
    """Per-Ingress: plain HTTP is only ever redirected (308) to HTTPS, even while the TLS
    Secret is missing and the controller would serve its default certificate."""
    return ((f"{ANNOTATION}force-ssl-redirect", "true"), (f"{ANNOTATION}ssl-redirect", "true"))


@dataclass(frozen=True)
class ControllerConfigView:
    meta: Meta
    settings: Pairs
    ingress_class: str


def files(deployment: Deployment) -> list[OutputFile]:
    controller = deployment.platform.ingress
    view = ControllerConfigView(
        Meta(controller.config_map, controller.namespace, ()),
        controller_settings(),
        controller.class_name,
    )
    return [
        OutputFile(
            f"{FOLDER}/controller-configmap.yaml",
            "k8s/ingress-nginx/configmap.yaml.j2",
            {"view": view},
        ),
        OutputFile(f"{FOLDER}/values.yaml", "k8s/ingress-nginx/values.yaml.j2", {"view": view}),
    ]
