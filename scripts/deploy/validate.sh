#!/usr/bin/env bash
# Validates deploy/ offline (no cluster, no network once the venv exists):
#   1. yamllint --strict on every YAML file in deploy/ (deploy/.yamllint);
#   2. kubernetes-validate --strict (schemas bundled in the package, unknown
#      fields rejected) on every Kubernetes manifest, against the oldest
#      Kubernetes these manifests target (1.27: gRPC probes are GA there) and
#      the newest the validator knows; a warning (e.g. an unknown kind) fails;
#      a deliberately broken manifest must fail, so a validator that passes
#      everything is caught;
#   3. consistency: kustomization.yaml lists every manifest and envoy.yaml;
#      the Deployment's uid, port and grace period agree with Dockerfile and
#      the ConfigMap; envoy.yaml ring-hashes x-session-key over the headless
#      Service over HTTP/2; the ConfigMap's session store is redis.yaml's
#      Service; nginx/gru-serve.conf and haproxy/haproxy.cfg hash
#      x-session-key consistently over HTTP/2. (Envoy itself is not run: no
#      Envoy binary can be installed here, so envoy.yaml's schema is checked
#      only this far.)
#   4. `nginx -t` and `haproxy -c` on the nginx and HAProxy examples, when
#      those binaries are installed (.ci/run installs them; the tests in
#      tests/balancers.rs run both configs against real replicas).
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV=${GRU_DEPLOY_VENV:-/tmp/gru-deploy-venv}
K8S_VERSIONS=(1.27.0 1.37.0)

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
    kubernetes-validate==1.37.0 yamllint==1.38.0

echo "== yamllint --strict deploy/"
"$VENV/bin/yamllint" --strict -c deploy/.yamllint deploy/

# Kubernetes manifests: every YAML in deploy/ but Envoy's bootstrap and the
# kustomization (not Kubernetes API objects).
MANIFESTS=()
for f in deploy/*.yaml; do
    case "$(basename "$f")" in envoy.yaml | kustomization.yaml) ;; *) MANIFESTS+=("$f") ;; esac
done

for v in "${K8S_VERSIONS[@]}"; do
    echo "== kubernetes-validate --strict -k $v ${MANIFESTS[*]}"
    out=$("$VENV/bin/kubernetes-validate" --strict -k "$v" "${MANIFESTS[@]}" 2>&1) || {
        echo "$out"
        exit 1
    }
    echo "$out"
    if grep -qv '^INFO ' <<<"$out"; then
        echo "validate.sh: kubernetes-validate printed more than passes (above)" >&2
        exit 1
    fi
done

echo "== the validator rejects a broken manifest"
bad=$(mktemp /tmp/gru-bad-manifest.XXXXXX.yaml)
trap 'rm -f "$bad"' EXIT
sed 's/^\(  *\)terminationGracePeriodSeconds:/\1terminationGracePeriodSecondz:/' deploy/deployment.yaml >"$bad"
if "$VENV/bin/kubernetes-validate" --strict --quiet "$bad" >/dev/null 2>&1; then
    echo "validate.sh: kubernetes-validate accepted a misspelt field: it is not validating" >&2
    exit 1
fi
echo "rejected, as it should be"

echo "== consistency checks"
"$VENV/bin/python" - <<'EOF'
import re, sys, pathlib, yaml

def load(path):
    return [d for d in yaml.safe_load_all(pathlib.Path(path).read_text()) if d]

def one(path, kind, name=None):
    docs = [d for d in load(path) if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(docs) == 1, f"{path}: want one {kind} {name or ''}"
    return docs[0]

errors = []
def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        errors.append(what)

deploy = pathlib.Path("deploy")
kust = load(deploy / "kustomization.yaml")[0]
listed = set(kust["resources"]) | {f for g in kust.get("configMapGenerator", []) for f in g.get("files", [])}
present = {p.name for p in deploy.glob("*.yaml")} - {"kustomization.yaml"}
check(listed == present, f"kustomization.yaml lists exactly the files in deploy/ ({sorted(present)})")

cm = one(deploy / "configmap.yaml", "ConfigMap")["data"]
dep = one(deploy / "deployment.yaml", "Deployment", "gru-serve")
pod = dep["spec"]["template"]["spec"]
ctr = next(c for c in pod["containers"] if c["name"] == "gru-serve")

dockerfile = pathlib.Path("Dockerfile").read_text()
uid = int(re.search(r"^USER (\d+):(\d+)$", dockerfile, re.M).group(1))
check(pod["securityContext"]["runAsUser"] == uid and pod["securityContext"]["runAsNonRoot"] is True,
      f"pod runs as non-root uid {uid}, the Dockerfile's USER")
sc = ctr["securityContext"]
check(sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
      and sc["capabilities"]["drop"] == ["ALL"], "container: read-only root, no privilege escalation, all capabilities dropped")
check("limits" in ctr["resources"] and "requests" in ctr["resources"], "container has resource requests and limits")

port = int(cm["GRU_LISTEN"].rsplit(":", 1)[1])
check(any(p["containerPort"] == port for p in ctr["ports"]), f"containerPort is GRU_LISTEN's port {port}")
# Triton's ports: each named container port is its flag's port.
named = {p["name"]: p["containerPort"] for p in ctr["ports"]}
for var, name in (("GRU_HTTP_LISTEN", "http"), ("GRU_TRITON_GRPC_LISTEN", "triton-grpc")):
    want = int(cm[var].rsplit(":", 1)[1])
    check(named.get(name) == want, f"containerPort '{name}' is {var}'s port {want}")
metrics_port = int(cm["GRU_METRICS_LISTEN"].rsplit(":", 1)[1])
named = {p["name"]: p["containerPort"] for p in ctr["ports"]}
for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/livez")):
    get = ctr[probe].get("httpGet", {})
    check(get.get("path") == path and named.get(get.get("port"), get.get("port")) == metrics_port,
          f"{probe} is an HTTP GET of {path} on the metrics port {metrics_port}")

def seconds(v):
    # gru-serve's durations: a bare number is seconds, else 500ms / 30s / 10m / 2h.
    for unit, mult in (("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)):
        if v.endswith(unit):
            return float(v[: -len(unit)]) * mult
    return float(v)

drain = seconds(cm["GRU_DRAIN_TIMEOUT"])
pre = ctr["lifecycle"]["preStop"]["exec"]["command"]
pause = int(pre[1]) if pre[0] == "sleep" else 0
grace = pod["terminationGracePeriodSeconds"]
check(grace >= pause + drain + 5, f"terminationGracePeriodSeconds {grace} >= preStop {pause} + drain {drain} + 5")
mounts = {m["mountPath"] for m in ctr["volumeMounts"]}
check(cm["GRU_MODEL_DIR"] in mounts, f"GRU_MODEL_DIR {cm['GRU_MODEL_DIR']} is a volume")
check(ctr["envFrom"][0]["configMapRef"]["name"] == one(deploy / "configmap.yaml", "ConfigMap")["metadata"]["name"],
      "the Deployment loads the ConfigMap")

headless = one(deploy / "service.yaml", "Service", "gru-serve-headless")
check(headless["spec"].get("clusterIP") == "None", "gru-serve-headless is headless")
for svc in load(deploy / "service.yaml"):
    check(svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items(),
          f"Service {svc['metadata']['name']} selects the gru-serve pods")
    # The KServe v2 HTTP/JSON port is HTTP/1.1; every other port is gRPC.
    check(all(p.get("appProtocol") == ("http" if p["name"] == "http" else "grpc") for p in svc["spec"]["ports"]),
          f"Service {svc['metadata']['name']} says appProtocol grpc (http on its http port)")
    check(all(p["targetPort"] in named or p["targetPort"] in named.values() for p in svc["spec"]["ports"]),
          f"Service {svc['metadata']['name']} targets the container's ports")

envoy = load(deploy / "envoy.yaml")[0]
cluster = next(c for c in envoy["static_resources"]["clusters"] if c["name"] == "gru_serve")
check(cluster["lb_policy"] == "RING_HASH", "Envoy cluster balances with RING_HASH")
opts = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
check("http2_protocol_options" in opts["explicit_http_config"], "Envoy speaks HTTP/2 (gRPC) upstream")
check("grpc_health_check" in cluster["health_checks"][0], "Envoy health-checks replicas with grpc.health.v1")
sa = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
check(cluster["type"] == "STRICT_DNS" and sa["address"].split(".")[0] == headless["metadata"]["name"]
      and sa["port_value"] == headless["spec"]["ports"][0]["port"], "Envoy resolves every pod through the headless Service")
hcm = envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
routes = [r for vh in hcm["route_config"]["virtual_hosts"] for r in vh["routes"]]
check(all({"header": {"header_name": "x-session-key"}} in r["route"]["hash_policy"] for r in routes),
      "every Envoy route hashes on the x-session-key header")
check(all(r["route"].get("timeout") == "0s" for r in routes), "Envoy routes have no timeout (long-lived streams)")

store = cm.get("GRU_SESSION_STORE", "")
redis_svc = one(deploy / "redis.yaml", "Service", "gru-redis")
redis_sts = one(deploy / "redis.yaml", "StatefulSet", "gru-redis")
m = re.match(r"rediss?://(?:[^@/]*@)?([^:/]+):(\d+)(?:/\d+)?$", store)
check(m is not None and m.group(1).split(".")[0] == redis_svc["metadata"]["name"]
      and int(m.group(2)) == redis_svc["spec"]["ports"][0]["port"],
      f"GRU_SESSION_STORE {store!r} is the gru-redis Service and port")
check(redis_sts["spec"]["serviceName"] == redis_svc["metadata"]["name"]
      and redis_svc["spec"]["selector"].items() <= redis_sts["spec"]["template"]["metadata"]["labels"].items(),
      "the gru-redis Service selects the Redis StatefulSet's pod")
redis_args = redis_sts["spec"]["template"]["spec"]["containers"][0]["args"]
check("noeviction" in redis_args, "Redis refuses writes when full rather than evicting sessions")

nginx = (deploy / "nginx" / "gru-serve.conf").read_text()
check(re.search(r"^\s*hash \$http_x_session_key consistent;", nginx, re.M) is not None,
      "nginx hashes $http_x_session_key consistently")
check(re.search(r"^\s*grpc_pass grpc://gru_serve;", nginx, re.M) is not None
      and re.search(r"^\s*listen \S+ http2;", nginx, re.M) is not None, "nginx speaks HTTP/2 and passes gRPC upstream")
check(re.search(r"^\s*client_max_body_size 0;", nginx, re.M) is not None, "nginx puts no size limit on a stream's body")
haproxy = (deploy / "haproxy" / "haproxy.cfg").read_text()
check(re.search(r"^\s*balance hdr\(x-session-key\)", haproxy, re.M) is not None
      and re.search(r"^\s*hash-type consistent", haproxy, re.M) is not None,
      "HAProxy balances on the x-session-key header, consistently")
servers = re.findall(r"^\s*server \S+ \S+ (.*)$", haproxy, re.M)
check(servers and all("proto h2" in s and f"port {metrics_port}" in s for s in servers),
      f"HAProxy reaches every replica over HTTP/2 and checks /readyz on the metrics port {metrics_port}")

if errors:
    sys.exit(f"validate.sh: {len(errors)} consistency check(s) failed")
EOF
# The balancer examples, checked by the real binaries (offline: the
# upstreams are IP addresses).
if command -v nginx >/dev/null; then
    echo "== nginx -t deploy/nginx/gru-serve.conf"
    prefix=$(mktemp -d /tmp/gru-nginx-check.XXXXXX)
    trap 'rm -f "$bad"; rm -rf "$prefix"' EXIT
    mkdir -p "$prefix/logs"
    cat >"$prefix/nginx.conf" <<EOF2
pid $prefix/nginx.pid;
error_log $prefix/logs/error.log;
events {}
http {
    access_log off;
    client_body_temp_path $prefix;
    proxy_temp_path $prefix;
    fastcgi_temp_path $prefix;
    uwsgi_temp_path $prefix;
    scgi_temp_path $prefix;
    include $PWD/deploy/nginx/gru-serve.conf;
}
EOF2
    nginx -t -q -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/logs/error.log"
else
    echo "== nginx not installed: deploy/nginx/gru-serve.conf not checked by nginx -t"
fi
if command -v haproxy >/dev/null; then
    echo "== haproxy -c -f deploy/haproxy/haproxy.cfg"
    haproxy -c -q -f deploy/haproxy/haproxy.cfg
else
    echo "== haproxy not installed: deploy/haproxy/haproxy.cfg not checked by haproxy -c"
fi
echo "== deploy/ validated"
