// pgward on Azure Container Apps in front of an Azure Database for PostgreSQL flexible
// server that accepts only Microsoft Entra sign-in. pgward signs in to the server with a
// user-assigned managed identity (no database password anywhere) and accepts clients
// on TCP port 6432 with their own Entra tokens.
//
//   az deployment group create -g my-rg -f deploy/bicep/main.bicep \
//     -p image=<registry>/pgward:<tag> entraAdminObjectId=<object id> entraAdminName=<UPN or group name> \
//        tlsCertPem=@tls.crt tlsKeyPem=@tls.key policyToml=@policy.toml
//
// After the first deployment, create pgward's role on the server (signed in as the
// Entra admin): SELECT * FROM pgaadauth_create_principal('<identityName>', false, false);
// then GRANT it what the policy allows. docs/operations.md has the whole sequence.

targetScope = 'resourceGroup'

@description('Prefix for every resource name.')
@minLength(3)
@maxLength(20)
param namePrefix string = 'pgward'

param location string = resourceGroup().location

@description('The pgward image built from deploy/Dockerfile, e.g. myregistry.azurecr.io/pgward:0.1.0 (a private registry also needs `registries` on the app).')
param image string

@description('Microsoft Entra tenant whose tokens clients present.')
param tenantId string = tenant().tenantId

@description('Object id of the user or group that becomes the server\'s Entra admin.')
param entraAdminObjectId string

@description('Display name (UPN or group name) of that admin.')
param entraAdminName string

@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param entraAdminType string = 'User'

@description('The database clients ask for (and that is created on the server).')
param databaseName string = 'app'

@description('PEM certificate chain pgward presents to clients.')
@secure()
param tlsCertPem string

@description('PEM private key for that certificate.')
@secure()
param tlsKeyPem string

@description('pgward policy (docs/policy.md).')
param policyToml string

@description('Seconds open sessions may run after SIGTERM before they are ended (the app gets 15 s more; Container Apps allows at most 600).')
@minValue(0)
@maxValue(585)
param drainTimeoutSecs int = 30

@minValue(1)
@maxValue(30)
param minReplicas int = 2

@minValue(1)
@maxValue(30)
param maxReplicas int = 4

@description('Where the replicas share cancels, limits and instance names (docs/operations.md, "Scaling out"): a control database `pgward_control` on the same server (created here; reached with the managed identity), an existing Azure Managed Redis (`redisHost`; give the identity a data access policy on it), or none (each replica on its own).')
@allowed([
  'postgres'
  'redis'
  'none'
])
param clusterStore string = 'postgres'

@description('Azure Managed Redis host name, e.g. myredis.westeurope.redis.azure.net (clusterStore = redis).')
param redisHost string = ''

param redisPort int = 10000

param postgresSkuName string = 'Standard_B1ms'

@allowed([
  'Burstable'
  'GeneralPurpose'
  'MemoryOptimized'
])
param postgresSkuTier string = 'Burstable'

var identityName = '${namePrefix}-proxy'
var serverName = '${namePrefix}-${uniqueString(resourceGroup().id)}'

// pgward's own identity: the upstream role it signs in as has the same name.
resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: identityName
  location: location
}

resource postgres 'Microsoft.DBforPostgreSQL/flexibleServers@2024-08-01' = {
  name: serverName
  location: location
  sku: {
    name: postgresSkuName
    tier: postgresSkuTier
  }
  properties: {
    version: '16'
    storage: {
      storageSizeGB: 32
    }
    authConfig: {
      // Entra only: no password sign-in exists to be phished or leaked.
      activeDirectoryAuth: 'Enabled'
      passwordAuth: 'Disabled'
      tenantId: tenantId
    }
    highAvailability: {
      mode: 'Disabled'
    }
  }
}

// The Entra admin is a person or group, not pgward: pgward's role gets only the grants
// the policy needs, so a policy mistake cannot exceed them.
resource entraAdmin 'Microsoft.DBforPostgreSQL/flexibleServers/administrators@2024-08-01' = {
  parent: postgres
  name: entraAdminObjectId
  properties: {
    principalName: entraAdminName
    principalType: entraAdminType
    tenantId: tenantId
  }
}

resource database 'Microsoft.DBforPostgreSQL/flexibleServers/databases@2024-08-01' = {
  parent: postgres
  name: databaseName
  properties: {
    charset: 'UTF8'
    collation: 'en_US.utf8'
  }
}

// The replicas' shared state ([cluster] backend = "postgres"): pgward creates its schema
// here at start, signed in as its managed identity (grant it CREATE: controlDatabaseSql).
resource controlDatabase 'Microsoft.DBforPostgreSQL/flexibleServers/databases@2024-08-01' = if (clusterStore == 'postgres') {
  parent: postgres
  name: 'pgward_control'
  properties: {
    charset: 'UTF8'
    collation: 'en_US.utf8'
  }
}

// Lets Azure services (the Container Apps environment's outbound addresses) reach the
// server; narrow it with a VNet-integrated server for production.
resource allowAzure 'Microsoft.DBforPostgreSQL/flexibleServers/firewallRules@2024-08-01' = {
  parent: postgres
  name: 'AllowAzureServices'
  properties: {
    startIpAddress: '0.0.0.0'
    endIpAddress: '0.0.0.0'
  }
}

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: '${namePrefix}-logs'
  location: location
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: 90
  }
}

// TCP ingress needs an environment in a virtual network.
resource vnet 'Microsoft.Network/virtualNetworks@2024-05-01' = {
  name: '${namePrefix}-vnet'
  location: location
  properties: {
    addressSpace: {
      addressPrefixes: [
        '10.40.0.0/16'
      ]
    }
    subnets: [
      {
        name: 'apps'
        properties: {
          addressPrefix: '10.40.0.0/23'
          delegations: [
            {
              name: 'containerapps'
              properties: {
                serviceName: 'Microsoft.App/environments'
              }
            }
          ]
        }
      }
    ]
  }
}

resource environment 'Microsoft.App/managedEnvironments@2024-03-01' = {
  name: '${namePrefix}-env'
  location: location
  properties: {
    appLogsConfiguration: {
      destination: 'log-analytics'
      logAnalyticsConfiguration: {
        customerId: logs.properties.customerId
        sharedKey: logs.listKeys().primarySharedKey
      }
    }
    vnetConfiguration: {
      infrastructureSubnetId: vnet.properties.subnets[0].id
      internal: false
    }
    workloadProfiles: [
      {
        name: 'Consumption'
        workloadProfileType: 'Consumption'
      }
    ]
  }
}

// [cluster] (docs/configuration.md): the store, reached with the same managed identity.
// Each Container Apps replica's host name is its instance name.
var clusterPostgresConfig = join([
  '[cluster]'
  'backend = "postgres"'
  'replicas = ${minReplicas}'
  ''
  '[cluster.postgres]'
  'host = "${postgres.properties.fullyQualifiedDomainName}"'
  'database = "pgward_control"'
  'tls = "verify-full"'
  '[cluster.postgres.credential]'
  'type = "managed-identity"'
  'user = "${identity.name}"'
  'client_id = "${identity.properties.clientId}"'
], '\n')

var clusterRedisConfig = join([
  '[cluster]'
  'backend = "redis"'
  'replicas = ${minReplicas}'
  ''
  '[cluster.redis]'
  'host = "${redisHost}"'
  'port = ${redisPort}'
  '[cluster.redis.credential]'
  'type = "managed-identity"'
  'user = "${identity.properties.principalId}"'
  'client_id = "${identity.properties.clientId}"'
], '\n')

var clusterConfig = clusterStore == 'postgres' ? clusterPostgresConfig : (clusterStore == 'redis' ? clusterRedisConfig : '')

// pgward.toml (docs/configuration.md). The admin endpoint listens on all interfaces so
// the platform's probes reach it; ingress exposes only 6432.
var pgwardConfig = join([
  '[listen]'
  'addr = "0.0.0.0:6432"'
  'tls_cert = "/etc/pgward/tls.crt"'
  'tls_key = "/etc/pgward/tls.key"'
  'drain_timeout_secs = ${drainTimeoutSecs}'
  ''
  '[admin]'
  'addr = "0.0.0.0:9187"'
  ''
  '[log]'
  'format = "json"'
  ''
  '[entra]'
  'tenant_id = "${tenantId}"'
  'audiences = ["https://ossrdbms-aad.database.windows.net"]'
  ''
  '[[upstreams]]'
  'name = "main"'
  'host = "${postgres.properties.fullyQualifiedDomainName}"'
  'port = 5432'
  'tls = "verify-full"'
  '[upstreams.credential]'
  'type = "managed-identity"'
  'user = "${identity.name}"'
  'client_id = "${identity.properties.clientId}"'
  ''
  '[[routes]]'
  'database = "${databaseName}"'
  'upstream = "main"'
  ''
  '[policy]'
  'file = "/etc/pgward/policy.toml"'
  ''
  '[audit]'
  'file = "/var/lib/pgward/audit/pgward.jsonl"'
  'stdout = true'
  ''
  '${clusterConfig}'
], '\n')

resource app 'Microsoft.App/containerApps@2024-03-01' = {
  name: namePrefix
  location: location
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    environmentId: environment.id
    workloadProfileName: 'Consumption'
    configuration: {
      activeRevisionsMode: 'Single'
      ingress: {
        external: true
        transport: 'tcp'
        targetPort: 6432
        exposedPort: 6432
      }
      // Each secret becomes a file in the `pgward-etc` volume below.
      secrets: [
        {
          name: 'pgward-toml'
          value: pgwardConfig
        }
        {
          name: 'policy-toml'
          value: policyToml
        }
        {
          name: 'tls-crt'
          value: tlsCertPem
        }
        {
          name: 'tls-key'
          value: tlsKeyPem
        }
      ]
    }
    template: {
      terminationGracePeriodSeconds: drainTimeoutSecs + 15
      containers: [
        {
          name: 'pgward'
          image: image
          args: [
            'serve'
            '--config'
            '/etc/pgward/pgward.toml'
          ]
          resources: {
            cpu: json('0.5')
            memory: '1Gi'
          }
          env: [
            {
              // Which of the app's identities pgward uses (it has exactly one here).
              name: 'AZURE_CLIENT_ID'
              value: identity.properties.clientId
            }
          ]
          probes: [
            {
              type: 'Liveness'
              httpGet: {
                path: '/healthz'
                port: 9187
              }
              periodSeconds: 10
            }
            {
              type: 'Readiness'
              httpGet: {
                path: '/readyz'
                port: 9187
              }
              periodSeconds: 5
            }
          ]
          volumeMounts: [
            {
              volumeName: 'pgward-etc'
              mountPath: '/etc/pgward'
            }
            {
              volumeName: 'audit'
              mountPath: '/var/lib/pgward/audit'
            }
          ]
        }
      ]
      volumes: [
        {
          name: 'pgward-etc'
          storageType: 'Secret'
          secrets: [
            {
              secretRef: 'pgward-toml'
              path: 'pgward.toml'
            }
            {
              secretRef: 'policy-toml'
              path: 'policy.toml'
            }
            {
              secretRef: 'tls-crt'
              path: 'tls.crt'
            }
            {
              secretRef: 'tls-key'
              path: 'tls.key'
            }
          ]
        }
        {
          name: 'audit'
          storageType: 'EmptyDir'
        }
      ]
      scale: {
        minReplicas: minReplicas
        maxReplicas: maxReplicas
        rules: [
          {
            name: 'connections'
            tcp: {
              metadata: {
                concurrentConnections: '200'
              }
            }
          }
        ]
      }
    }
  }
  dependsOn: [
    entraAdmin
    database
    controlDatabase
  ]
}

output pgwardFqdn string = app.properties.configuration.ingress.fqdn
output postgresHost string = postgres.properties.fullyQualifiedDomainName
output identityName string = identity.name
output identityClientId string = identity.properties.clientId
output createRoleSql string = 'SELECT * FROM pgaadauth_create_principal(\'${identity.name}\', false, false);'
output controlDatabaseSql string = clusterStore == 'postgres' ? 'GRANT CONNECT, CREATE ON DATABASE pgward_control TO "${identity.name}";' : ''
