package com.azure.core.credential;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/** Stand-in for azure-core's TokenRequestContext (client recipe tests). */
public class TokenRequestContext {
    private final List<String> scopes = new ArrayList<>();

    public TokenRequestContext addScopes(String... more) {
        scopes.addAll(Arrays.asList(more));
        return this;
    }

    public List<String> getScopes() {
        return scopes;
    }
}
