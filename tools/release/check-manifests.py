"""Checks rendered Kubernetes manifests (`kubectl kustomize deploy/kubernetes`) for what
the schemas cannot: the Pod Security Standards' restricted profile, and that the pieces
point at each other (Service, PDB and HPA select the Deployment's pods, volumes name the
ConfigMap, the ServiceAccount exists and mounts no token).

    python3 check-manifests.py RENDERED.yaml

Exit 1 with every violation listed. The profile's rules are those of
https://kubernetes.io/docs/concepts/security/pod-security-standards/ (baseline and
restricted, as of Kubernetes 1.30).
"""

import sys

import yaml

ALLOWED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def restricted(where, pod, errors):
    """The baseline and restricted rules for one pod spec."""
    err = lambda msg: errors.append(f"{where}: {msg}")
    psc = pod.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            err(f"{key} is set")
    for v in pod.get("volumes") or []:
        kinds = set(v) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            err(f"volume {v.get('name')}: type {sorted(kinds - ALLOWED_VOLUMES)} is not allowed")
    for s in psc.get("sysctls") or []:
        if s.get("name") not in SAFE_SYSCTLS:
            err(f"sysctl {s.get('name')} is not in the safe set")
    containers = [
        (kind, c)
        for kind in ("initContainers", "containers", "ephemeralContainers")
        for c in pod.get(kind) or []
    ]
    if not containers:
        err("no containers")
    for kind, c in containers:
        cw = f"{kind}[{c.get('name')}]"
        sc = c.get("securityContext") or {}
        merged = {**psc, **sc}
        if sc.get("privileged"):
            err(f"{cw}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            err(f"{cw}: allowPrivilegeEscalation must be false")
        if merged.get("runAsNonRoot") is not True:
            err(f"{cw}: runAsNonRoot must be true (pod or container)")
        if merged.get("runAsUser") == 0:
            err(f"{cw}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            err(f"{cw}: seccompProfile must be RuntimeDefault or Localhost, is {seccomp}")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            err(f"{cw}: capabilities must drop ALL")
        extra = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
        if extra:
            err(f"{cw}: capabilities added beyond NET_BIND_SERVICE: {sorted(extra)}")
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                err(f"{cw}: hostPort {p['hostPort']}")
        if sc.get("procMount") not in (None, "Default"):
            err(f"{cw}: procMount {sc['procMount']}")
        se = merged.get("seLinuxOptions") or {}
        if se.get("type", "") not in SELINUX_TYPES or se.get("user") or se.get("role"):
            err(f"{cw}: seLinuxOptions {se}")
        if (merged.get("windowsOptions") or {}).get("hostProcess"):
            err(f"{cw}: windowsOptions.hostProcess")
        apparmor = (merged.get("appArmorProfile") or {}).get("type")
        if apparmor not in (None, "RuntimeDefault", "Localhost"):
            err(f"{cw}: appArmorProfile {apparmor}")
        # Ours, beyond the profile: nothing in the image is meant to be written.
        if sc.get("readOnlyRootFilesystem") is not True:
            err(f"{cw}: readOnlyRootFilesystem must be true")


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def main() -> int:
    with open(sys.argv[1]) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    errors = []
    need = [
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ServiceAccount",
    ]
    for kind in need:
        if len(by_kind.get(kind, [])) != 1:
            errors.append(f"want exactly one {kind}, found {len(by_kind.get(kind, []))}")
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 1

    (dep,) = by_kind["Deployment"]
    (svc,) = by_kind["Service"]
    (pdb,) = by_kind["PodDisruptionBudget"]
    (hpa,) = by_kind["HorizontalPodAutoscaler"]
    (sa,) = by_kind["ServiceAccount"]
    (cm,) = by_kind["ConfigMap"]
    pod = dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"].get("labels") or {}
    restricted("Deployment/" + dep["metadata"]["name"], pod, errors)

    if dep["spec"]["selector"].get("matchLabels") != {
        k: labels.get(k) for k in dep["spec"]["selector"].get("matchLabels", {})
    }:
        errors.append("the Deployment's selector does not match its pod labels")
    if dep["spec"].get("replicas", 1) < 2:
        errors.append("the Deployment runs fewer than 2 replicas")
    if not selects(svc["spec"].get("selector"), labels):
        errors.append("the Service does not select the Deployment's pods")
    if not selects(pdb["spec"]["selector"].get("matchLabels"), labels):
        errors.append("the PodDisruptionBudget does not select the Deployment's pods")
    ref = hpa["spec"]["scaleTargetRef"]
    if (ref["kind"], ref["name"]) != ("Deployment", dep["metadata"]["name"]):
        errors.append("the HorizontalPodAutoscaler does not target the Deployment")
    if hpa["spec"].get("minReplicas", 1) < 2:
        errors.append("the HorizontalPodAutoscaler may scale below 2 replicas")
    if pod.get("serviceAccountName") != sa["metadata"]["name"]:
        errors.append("the pod does not use the ServiceAccount")
    if sa.get("automountServiceAccountToken") is not False:
        errors.append("the ServiceAccount mounts a token")
    if pod.get("automountServiceAccountToken") is not False:
        errors.append("the pod mounts a ServiceAccount token")
    names = [v["configMap"]["name"] for v in pod.get("volumes") or [] if "configMap" in v]
    if cm["metadata"]["name"] not in names:
        errors.append("no volume mounts the ConfigMap")
    container_ports = {
        p["name"] for c in pod["containers"] for p in c.get("ports") or [] if "name" in p
    }
    for p in svc["spec"]["ports"]:
        if isinstance(p["targetPort"], str) and p["targetPort"] not in container_ports:
            errors.append(f"Service port {p['name']} targets unknown port {p['targetPort']}")

    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 1
    kinds = ", ".join(sorted(by_kind))
    print(f"check-manifests: ok: restricted profile and references ({kinds})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
