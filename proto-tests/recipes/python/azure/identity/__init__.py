"""Stand-in for azure.identity in the client recipe tests: the credential classes the
recipes use, minting from pgward's development issuer (recipes/bin/mint) instead of Entra.
`azure` here is a namespace package, so nothing else under `azure.` is shadowed."""

import os
import subprocess
import time
from typing import NamedTuple

_MINT = os.path.join(os.path.dirname(__file__), "..", "..", "..", "bin", "mint")


class AccessToken(NamedTuple):
    token: str
    expires_on: int


class DefaultAzureCredential:
    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def get_token(self, *scopes, **kwargs):
        if len(scopes) != 1:
            raise ValueError(f"expected one scope, got {scopes!r}")
        out = subprocess.run([_MINT, scopes[0], "python"], check=True, capture_output=True, text=True)
        return AccessToken(out.stdout.strip(), int(time.time()) + 3000)


ManagedIdentityCredential = DefaultAzureCredential
WorkloadIdentityCredential = DefaultAzureCredential
