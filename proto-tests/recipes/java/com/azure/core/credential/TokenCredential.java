package com.azure.core.credential;

/** Stand-in for azure-core's TokenCredential (client recipe tests): only the synchronous call. */
public interface TokenCredential {
    AccessToken getTokenSync(TokenRequestContext request);
}
