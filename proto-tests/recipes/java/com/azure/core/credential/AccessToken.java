package com.azure.core.credential;

/** Stand-in for azure-core's AccessToken (client recipe tests). */
public class AccessToken {
    private final String token;

    public AccessToken(String token) {
        this.token = token;
    }

    public String getToken() {
        return token;
    }
}
