"""Write a signing key's JWKS to argv[1] and print a customer token valid for an hour."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cloudretail.runtime.auth import TokenIssuer, generate_private_key_pem

issuer = TokenIssuer(generate_private_key_pem(), issuer="cloudretail", audience="cloudretail")
Path(sys.argv[1]).write_text(json.dumps(issuer.jwks()))
print(issuer.issue("00000000-0000-4000-8000-000000000002", "customer"))
