"""The API gateway: one entry point (port 8080) in front of every service.

`create_gateway(config)` builds the ASGI app; `load_config()` reads the generated route
table and the deployment settings from the environment; `python -m cloudretail.runtime.gateway`
serves it. See runtime/gateway/README.md for the design and the measurements behind it.
"""

from cloudretail.runtime.gateway.app import Gateway, create_gateway
from cloudretail.runtime.gateway.config import GatewayConfig, load_config

__all__ = ["Gateway", "GatewayConfig", "create_gateway", "load_config"]
