package com.azure.identity;

/** Stand-in for azure-identity's builder (client recipe tests). */
public class DefaultAzureCredentialBuilder {
    public DefaultAzureCredential build() {
        return new DefaultAzureCredential();
    }
}
