package com.azure.identity;

import com.azure.core.credential.AccessToken;
import com.azure.core.credential.TokenCredential;
import com.azure.core.credential.TokenRequestContext;
import java.io.IOException;
import java.nio.charset.StandardCharsets;

/** Stand-in for azure-identity (client recipe tests): mints from pgward's development issuer. */
public class DefaultAzureCredential implements TokenCredential {
    @Override
    public AccessToken getTokenSync(TokenRequestContext request) {
        if (request.getScopes().size() != 1) {
            throw new IllegalArgumentException("expected one scope: " + request.getScopes());
        }
        String mint = System.getProperty("pgward.recipe.mint");
        try {
            Process p = new ProcessBuilder(mint, request.getScopes().get(0), "java")
                    .redirectError(ProcessBuilder.Redirect.INHERIT)
                    .start();
            String token = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8).trim();
            if (p.waitFor() != 0) {
                throw new IllegalStateException("mint failed");
            }
            return new AccessToken(token);
        } catch (IOException | InterruptedException e) {
            throw new IllegalStateException("mint: " + e, e);
        }
    }
}
