//! The provider's policy over a tenant's pods (pure; no I/O). Start at [`build_pod`].
//!
//! A consumer never creates pods on the provider: it writes `ShadowPod`s, and the provider's controller
//! builds each pod from the template under the tenant's [`TenantPolicy`], never as sent. [`check`] lists
//! every [`Violation`] (host namespaces, hostPath and other unsafe volume types, privileged containers,
//! added capabilities beyond the baseline set, host ports, unconfined seccomp or AppArmor, unsafe sysctls,
//! `nodeName`, tolerations, priority and runtime classes, the provider's own service accounts); the
//! provider's validating webhook runs the same check on every pod in a tenant namespace, whoever creates
//! it. [`build_pod`] then sets what the provider owns: scheduling constraints, the service account, the
//! runtime class, and the labels that say whose pod it is (from the tenant's authenticated identity, not
//! from the template).

use std::collections::BTreeMap;

use ferry_crds::kinds::TenantPolicy;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, SecurityContext};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::translate::{ORIGIN_CLUSTER_LABEL, ORIGIN_UID_LABEL};

/// Capabilities a container may add without the provider's say (Pod Security "baseline").
pub const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Volume types a tenant pod may use without the provider's say.
pub const SAFE_VOLUME_TYPES: [&str; 7] = [
    "configMap",
    "secret",
    "emptyDir",
    "projected",
    "downwardAPI",
    "persistentVolumeClaim",
    "ephemeral",
];

/// Namespaced sysctls that Pod Security "baseline" allows.
pub const SAFE_SYSCTLS: [&str; 5] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
];

/// The service account every tenant pod runs as: the tenant namespace's own `default`, which has no rights
/// on the provider.
pub const TENANT_SERVICE_ACCOUNT: &str = "default";

/// One thing a tenant pod may not do, with the field at fault and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct Violation {
    /// The field, as a path (`spec.containers[0].securityContext.privileged`).
    pub field: String,
    /// What is wrong and the fix.
    pub problem: String,
}

fn v(field: impl Into<String>, problem: impl Into<String>) -> Violation {
    Violation {
        field: field.into(),
        problem: problem.into(),
    }
}

/// Where a pod spec comes from, which decides what the apiserver may already have added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// A `ShadowPod` template, as the consumer sent it.
    Template,
    /// A pod on its way into the apiserver (the validating webhook): the admission plugins have already
    /// added the default not-ready/unreachable tolerations, the `default` service account and a priority.
    Admitted,
}

/// The default tolerations the DefaultTolerationSeconds admission plugin adds to every pod.
fn is_default_toleration(t: &k8s_openapi::api::core::v1::Toleration) -> bool {
    matches!(
        t.key.as_deref(),
        Some("node.kubernetes.io/not-ready" | "node.kubernetes.io/unreachable")
    ) && t.effect.as_deref() == Some("NoExecute")
        && t.operator.as_deref().is_none_or(|o| o == "Exists")
        && t.value.as_deref().is_none_or(str::is_empty)
}

/// The type of a volume: the name of its one source field (`hostPath`, `configMap`, …).
fn volume_type(vol: &k8s_openapi::api::core::v1::Volume) -> String {
    serde_json::to_value(vol)
        .ok()
        .and_then(|j| j.as_object()?.keys().find(|k| k.as_str() != "name").cloned())
        .unwrap_or_else(|| "emptyDir".into())
}

fn check_security_context(path: &str, sc: &SecurityContext, policy: &TenantPolicy, out: &mut Vec<Violation>) {
    if sc.privileged == Some(true) {
        out.push(v(
            format!("{path}.securityContext.privileged"),
            "is true: the container would own the provider's host; fix: drop privileged",
        ));
    }
    for cap in sc.capabilities.iter().flat_map(|c| c.add.iter().flatten()) {
        let name = cap.trim_start_matches("CAP_").to_ascii_uppercase();
        let allowed = BASELINE_CAPABILITIES.contains(&name.as_str())
            || policy
                .allowed_capabilities
                .iter()
                .any(|a| a.trim_start_matches("CAP_").eq_ignore_ascii_case(&name));
        if !allowed {
            out.push(v(
                format!("{path}.securityContext.capabilities.add"),
                format!(
                    "adds {cap}, beyond the baseline set and this tenant's policy; fix: drop it, or ask the provider to allow it in the Tenant's policy.allowedCapabilities"
                ),
            ));
        }
    }
    if sc
        .seccomp_profile
        .as_ref()
        .is_some_and(|p| p.type_ == "Unconfined")
    {
        out.push(v(
            format!("{path}.securityContext.seccompProfile.type"),
            "is Unconfined; fix: use RuntimeDefault or leave it out",
        ));
    }
    if sc.proc_mount.as_deref().is_some_and(|m| m != "Default") {
        out.push(v(
            format!("{path}.securityContext.procMount"),
            "unmasks /proc; fix: leave it out (Default)",
        ));
    }
    if let Some(se) = &sc.se_linux_options
        && (se.user.is_some()
            || se.role.is_some()
            || se
                .type_
                .as_deref()
                .is_some_and(|t| !matches!(t, "container_t" | "container_init_t" | "container_kvm_t")))
    {
        out.push(v(
            format!("{path}.securityContext.seLinuxOptions"),
            "sets an SELinux user, role or type other than the container types; fix: leave it out",
        ));
    }
    if sc.windows_options.as_ref().and_then(|w| w.host_process) == Some(true) {
        out.push(v(
            format!("{path}.securityContext.windowsOptions.hostProcess"),
            "is true: a host process; fix: drop it",
        ));
    }
}

fn check_container(path: &str, c: &Container, policy: &TenantPolicy, out: &mut Vec<Violation>) {
    if let Some(sc) = &c.security_context {
        check_security_context(path, sc, policy, out);
    }
    for (i, p) in c.ports.iter().flatten().enumerate() {
        if p.host_port.is_some_and(|hp| hp != 0) {
            out.push(v(
                format!("{path}.ports[{i}].hostPort"),
                format!(
                    "asks for host port {} of a provider node; fix: use a Service instead",
                    p.host_port.unwrap_or_default()
                ),
            ));
        }
    }
}

/// Every reason the pod (its spec and annotations) breaks the tenant's policy; empty when it may run.
pub fn check(
    spec: &PodSpec,
    annotations: &BTreeMap<String, String>,
    policy: &TenantPolicy,
    stage: Stage,
) -> Vec<Violation> {
    let mut out = Vec::new();
    for (on, field, what) in [
        (
            spec.host_network,
            "spec.hostNetwork",
            "the provider's host network",
        ),
        (spec.host_pid, "spec.hostPID", "the provider's host processes"),
        (spec.host_ipc, "spec.hostIPC", "the provider's host IPC"),
    ] {
        if on == Some(true) {
            out.push(v(
                field,
                format!("is true: the pod would share {what}; fix: drop it"),
            ));
        }
    }
    if spec.node_name.as_deref().is_some_and(|n| !n.is_empty()) {
        out.push(v(
            "spec.nodeName",
            "is set: the provider's scheduler places tenant pods; fix: leave it empty",
        ));
    }
    let tolerations = spec.tolerations.iter().flatten();
    let mut tolerations = tolerations.filter(|t| {
        !(stage == Stage::Admitted && (is_default_toleration(t) || policy.tolerations.contains(t)))
    });
    if tolerations.next().is_some() {
        out.push(v(
            "spec.tolerations",
            "are set: which provider nodes tolerate tenant pods is the provider's choice; fix: leave them out",
        ));
    }
    match (stage, spec.priority_class_name.as_deref()) {
        (_, None | Some("")) => {}
        // after admission a cluster-wide default class may have been filled in; never a system class
        (Stage::Admitted, Some(c)) if !c.starts_with("system-") => {}
        (_, Some(c)) => out.push(v(
            "spec.priorityClassName",
            format!("is {c:?}: tenant pods run at the provider's priority; fix: leave it out"),
        )),
    }
    if stage == Stage::Template && spec.priority.is_some_and(|p| p != 0) {
        out.push(v(
            "spec.priority",
            "is set: tenant pods run at the provider's priority; fix: leave it out",
        ));
    }
    if let Some(rc) = spec.runtime_class_name.as_deref()
        && policy.runtime_class_name.as_deref() != Some(rc)
    {
        out.push(v(
            "spec.runtimeClassName",
            format!("is {rc:?}: the runtime class is the provider's choice; fix: leave it out"),
        ));
    }
    for (field, sa) in [
        ("spec.serviceAccountName", &spec.service_account_name),
        ("spec.serviceAccount", &spec.service_account),
    ] {
        if let Some(sa) = sa.as_deref()
            && !sa.is_empty()
            && sa != TENANT_SERVICE_ACCOUNT
        {
            out.push(v(
                field,
                format!(
                    "is {sa:?}: tenant pods run as the namespace's {TENANT_SERVICE_ACCOUNT:?} service account, never one of the provider's; fix: leave it out"
                ),
            ));
        }
    }
    if spec
        .scheduler_name
        .as_deref()
        .is_some_and(|s| !s.is_empty() && s != "default-scheduler")
    {
        out.push(v(
            "spec.schedulerName",
            "names another scheduler: the provider schedules tenant pods; fix: leave it out",
        ));
    }
    if spec.ephemeral_containers.as_ref().is_some_and(|e| !e.is_empty()) {
        out.push(v(
            "spec.ephemeralContainers",
            "are set; fix: leave them out (debugging goes through kubectl on the consumer)",
        ));
    }
    if let Some(psc) = &spec.security_context {
        if psc
            .seccomp_profile
            .as_ref()
            .is_some_and(|p| p.type_ == "Unconfined")
        {
            out.push(v(
                "spec.securityContext.seccompProfile.type",
                "is Unconfined; fix: use RuntimeDefault or leave it out",
            ));
        }
        if let Some(se) = &psc.se_linux_options
            && (se.user.is_some() || se.role.is_some())
        {
            out.push(v(
                "spec.securityContext.seLinuxOptions",
                "sets an SELinux user or role; fix: leave it out",
            ));
        }
        for (i, s) in psc.sysctls.iter().flatten().enumerate() {
            if !SAFE_SYSCTLS.contains(&s.name.as_str()) {
                out.push(v(
                    format!("spec.securityContext.sysctls[{i}]"),
                    format!("{} is not a safe sysctl; fix: drop it", s.name),
                ));
            }
        }
        if psc.windows_options.as_ref().and_then(|w| w.host_process) == Some(true) {
            out.push(v(
                "spec.securityContext.windowsOptions.hostProcess",
                "is true: a host process; fix: drop it",
            ));
        }
    }
    for (i, vol) in spec.volumes.iter().flatten().enumerate() {
        let ty = volume_type(vol);
        let field = format!("spec.volumes[{i}].{ty}");
        if ty == "hostPath" {
            out.push(v(
                field,
                format!(
                    "volume {:?} would mount the provider's host filesystem; fix: use a ConfigMap, Secret, emptyDir or PVC",
                    vol.name
                ),
            ));
        } else if !SAFE_VOLUME_TYPES.contains(&ty.as_str()) && !policy.allowed_volume_types.contains(&ty) {
            out.push(v(
                field,
                format!(
                    "volume {:?} is of type {ty}, which this provider does not allow for tenants; fix: use a ConfigMap, Secret, emptyDir or PVC, or ask the provider to add {ty} to the Tenant's policy.allowedVolumeTypes",
                    vol.name
                ),
            ));
        }
    }
    for (list, name) in [
        (
            spec.init_containers.as_deref().unwrap_or_default(),
            "initContainers",
        ),
        (spec.containers.as_slice(), "containers"),
    ] {
        for (i, c) in list.iter().enumerate() {
            check_container(&format!("spec.{name}[{i}]"), c, policy, &mut out);
        }
    }
    for (k, val) in annotations {
        let apparmor = k.starts_with("container.apparmor.security.beta.kubernetes.io/");
        let seccomp = k == "seccomp.security.alpha.kubernetes.io/pod"
            || k.starts_with("container.seccomp.security.alpha.kubernetes.io/");
        if (apparmor || seccomp) && val == "unconfined" {
            out.push(v(
                format!("metadata.annotations[{k}]"),
                "is unconfined; fix: drop the annotation (the runtime default applies)",
            ));
        }
    }
    out
}

/// What the provider knows about a `ShadowPod` from its own side, never from the template.
#[derive(Debug, Clone)]
pub struct Owner<'a> {
    /// The pod's name and namespace (the `ShadowPod`'s).
    pub name: &'a str,
    /// Namespace.
    pub namespace: &'a str,
    /// The tenant that owns the namespace (its cluster ID, from the provider's own namespace label).
    pub tenant: &'a str,
    /// The consumer pod's UID, as the `ShadowPod` says (only used for adoption by the consumer).
    pub consumer_pod_uid: &'a str,
    /// The owner reference to the `ShadowPod`.
    pub owner_reference: OwnerReference,
}

/// The pod the provider runs for a `ShadowPod` template (its JSON text), or every reason it may not run.
pub fn build_pod(template: &str, owner: &Owner<'_>, policy: &TenantPolicy) -> Result<Pod, Vec<Violation>> {
    let pod: Pod = serde_json::from_str(template).map_err(|e| {
        vec![v(
            "spec.template",
            format!("is not a pod: {e}; fix: send a Pod's metadata and spec"),
        )]
    })?;
    let Some(mut spec) = pod.spec else {
        return Err(vec![v(
            "spec.template.spec",
            "is missing; fix: send the pod's spec",
        )]);
    };
    let annotations = pod.metadata.annotations.unwrap_or_default();
    let violations = check(&spec, &annotations, policy, Stage::Template);
    if !violations.is_empty() {
        return Err(violations);
    }
    // what the provider owns
    spec.node_name = None;
    spec.node_selector = (!policy.node_selector.is_empty()).then(|| policy.node_selector.clone());
    spec.affinity = None;
    spec.tolerations = (!policy.tolerations.is_empty()).then(|| policy.tolerations.clone());
    spec.topology_spread_constraints = None;
    spec.scheduler_name = None;
    spec.priority = None;
    spec.priority_class_name = None;
    spec.preemption_policy = None;
    spec.runtime_class_name = policy.runtime_class_name.clone();
    spec.overhead = None;
    spec.service_account_name = Some(TENANT_SERVICE_ACCOUNT.into());
    spec.service_account = None;
    // labels that say whose pod it is come from the provider's side; no other ferry label travels
    let mut labels: BTreeMap<String, String> = pod
        .metadata
        .labels
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("ferry.dev/"))
        .collect();
    labels.insert(ORIGIN_CLUSTER_LABEL.into(), owner.tenant.into());
    labels.insert(ORIGIN_UID_LABEL.into(), owner.consumer_pod_uid.into());
    let annotations: BTreeMap<String, String> = annotations
        .into_iter()
        .filter(|(k, _)| !k.starts_with("ferry.dev/"))
        .collect();
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(owner.name.into()),
            namespace: Some(owner.namespace.into()),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: Some(vec![owner.owner_reference.clone()]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn owner() -> Owner<'static> {
        Owner {
            name: "web-1",
            namespace: "shop-c1",
            tenant: "consumer-c1",
            consumer_pod_uid: "u-1",
            owner_reference: OwnerReference {
                api_version: "ferry.dev/v1alpha1".into(),
                kind: "ShadowPod".into(),
                name: "web-1".into(),
                uid: "s-1".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
        }
    }

    fn template(spec: serde_json::Value) -> serde_json::Value {
        let mut base = json!({
            "metadata": {"name": "ignored", "namespace": "kube-system", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app", "image": "busybox"}]},
        });
        for (k, val) in spec.as_object().unwrap() {
            base["spec"][k] = val.clone();
        }
        base
    }

    fn fields(t: serde_json::Value) -> Vec<String> {
        build_pod(&t.to_string(), &owner(), &TenantPolicy::default())
            .unwrap_err()
            .into_iter()
            .map(|v| v.field)
            .collect()
    }

    #[test]
    fn a_plain_pod_is_built_with_what_the_provider_owns() {
        let p = build_pod(
            &template(json!({})).to_string(),
            &owner(),
            &TenantPolicy::default(),
        )
        .unwrap();
        assert_eq!(p.metadata.name.as_deref(), Some("web-1"));
        assert_eq!(
            p.metadata.namespace.as_deref(),
            Some("shop-c1"),
            "never the template's namespace"
        );
        let labels = p.metadata.labels.unwrap();
        assert_eq!(labels["app"], "web");
        assert_eq!(labels[ORIGIN_CLUSTER_LABEL], "consumer-c1");
        assert_eq!(labels[ORIGIN_UID_LABEL], "u-1");
        assert_eq!(p.metadata.owner_references.unwrap()[0].kind, "ShadowPod");
        let s = p.spec.unwrap();
        assert_eq!(s.service_account_name.as_deref(), Some("default"));
        assert!(s.node_selector.is_none() && s.runtime_class_name.is_none());
    }

    #[test]
    fn origin_labels_come_from_the_tenant_not_from_the_template() {
        let mut t = template(json!({}));
        t["metadata"]["labels"][ORIGIN_CLUSTER_LABEL] = json!("another-tenant");
        t["metadata"]["labels"]["ferry.dev/tenant"] = json!("another-tenant");
        t["metadata"]["annotations"] = json!({"ferry.dev/refusal": "x", "team": "a"});
        let p = build_pod(&t.to_string(), &owner(), &TenantPolicy::default()).unwrap();
        let labels = p.metadata.labels.unwrap();
        assert_eq!(labels[ORIGIN_CLUSTER_LABEL], "consumer-c1");
        assert!(!labels.contains_key("ferry.dev/tenant"));
        let ann = p.metadata.annotations.unwrap();
        assert_eq!(ann.len(), 1);
        assert_eq!(ann["team"], "a");
    }

    #[test]
    fn the_policy_sets_scheduling_and_runtime_class() {
        let policy = TenantPolicy {
            node_selector: [("pool".to_string(), "tenants".to_string())].into(),
            runtime_class_name: Some("gvisor".into()),
            ..Default::default()
        };
        let t = template(json!({"nodeSelector": {"kubernetes.io/hostname": "master-0"},
            "affinity": {"nodeAffinity": {}}, "runtimeClassName": "gvisor"}));
        let s = build_pod(&t.to_string(), &owner(), &policy)
            .unwrap()
            .spec
            .unwrap();
        assert_eq!(s.node_selector.unwrap()["pool"], "tenants");
        assert!(s.affinity.is_none());
        assert_eq!(s.runtime_class_name.as_deref(), Some("gvisor"));
    }

    #[test]
    fn the_policy_tolerations_are_the_only_ones_a_tenant_pod_carries_and_the_only_ones_admitted() {
        let dedicated: k8s_openapi::api::core::v1::Toleration = serde_json::from_value(
            json!({"key": "pool/tenants", "operator": "Exists", "effect": "NoSchedule"}),
        )
        .unwrap();
        let policy = TenantPolicy {
            tolerations: vec![dedicated.clone()],
            ..Default::default()
        };
        // the consumer's tolerations never pass (the template refuses them); the built pod has the policy's
        let sent = template(json!({"tolerations": [{"operator": "Exists"}]}));
        assert!(build_pod(&sent.to_string(), &owner(), &policy).is_err());
        let s = build_pod(&template(json!({})).to_string(), &owner(), &policy)
            .unwrap()
            .spec
            .unwrap();
        assert_eq!(s.tolerations.clone().unwrap(), vec![dedicated.clone()]);
        // admitted: the policy's and the defaults pass, anything else is refused
        assert!(check(&s, &Default::default(), &policy, Stage::Admitted).is_empty());
        let mut other = s.clone();
        other.tolerations.as_mut().unwrap().push(
            serde_json::from_value(
                json!({"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}),
            )
            .unwrap(),
        );
        let v = check(&other, &Default::default(), &policy, Stage::Admitted);
        assert!(v.iter().any(|v| v.field == "spec.tolerations"), "{v:?}");
        assert!(!check(&s, &Default::default(), &TenantPolicy::default(), Stage::Admitted).is_empty());
    }

    #[test]
    fn every_host_access_and_privilege_is_refused_naming_its_field() {
        let t = template(json!({
            "hostNetwork": true, "hostPID": true, "hostIPC": true, "nodeName": "master-0",
            "tolerations": [{"operator": "Exists"}], "priorityClassName": "system-node-critical",
            "priority": 2000001000, "runtimeClassName": "runc-privileged", "serviceAccountName": "ferry-agent",
            "schedulerName": "mine",
            "securityContext": {"seccompProfile": {"type": "Unconfined"}, "sysctls": [{"name": "kernel.msgmax", "value": "1"}]},
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}, {"name": "n", "nfs": {"server": "s", "path": "/"}},
                        {"name": "c", "csi": {"driver": "d"}}, {"name": "g", "gitRepo": {"repository": "r"}},
                        {"name": "ok", "emptyDir": {}}],
            "initContainers": [{"name": "init", "image": "x", "securityContext": {"privileged": true}}],
            "containers": [{"name": "app", "image": "x",
                "ports": [{"containerPort": 80, "hostPort": 80}],
                "securityContext": {"capabilities": {"add": ["NET_ADMIN", "CHOWN", "CAP_SYS_ADMIN"]},
                    "procMount": "Unmasked", "seccompProfile": {"type": "Unconfined"}}}],
        }));
        let got = fields(t);
        for want in [
            "spec.hostNetwork",
            "spec.hostPID",
            "spec.hostIPC",
            "spec.nodeName",
            "spec.tolerations",
            "spec.priorityClassName",
            "spec.priority",
            "spec.runtimeClassName",
            "spec.serviceAccountName",
            "spec.schedulerName",
            "spec.securityContext.seccompProfile.type",
            "spec.securityContext.sysctls[0]",
            "spec.volumes[0].hostPath",
            "spec.volumes[1].nfs",
            "spec.volumes[2].csi",
            "spec.volumes[3].gitRepo",
            "spec.initContainers[0].securityContext.privileged",
            "spec.containers[0].ports[0].hostPort",
            "spec.containers[0].securityContext.procMount",
            "spec.containers[0].securityContext.seccompProfile.type",
        ] {
            assert!(got.contains(&want.to_string()), "{want} not refused; got {got:?}");
        }
        // NET_ADMIN and SYS_ADMIN refused, CHOWN (baseline) not
        let caps = got
            .iter()
            .filter(|f| *f == "spec.containers[0].securityContext.capabilities.add")
            .count();
        assert_eq!(caps, 2);
        assert!(!got.iter().any(|f| f.starts_with("spec.volumes[4]")));
    }

    #[test]
    fn unconfined_apparmor_and_seccomp_annotations_are_refused() {
        let mut t = template(json!({}));
        t["metadata"]["annotations"] = json!({
            "container.apparmor.security.beta.kubernetes.io/app": "unconfined",
            "seccomp.security.alpha.kubernetes.io/pod": "unconfined",
            "container.apparmor.security.beta.kubernetes.io/side": "runtime/default",
        });
        assert_eq!(fields(t).len(), 2);
    }

    #[test]
    fn the_tenant_policy_can_allow_a_capability_and_a_volume_type() {
        let t = template(json!({
            "volumes": [{"name": "c", "csi": {"driver": "d"}}],
            "containers": [{"name": "app", "image": "x",
                "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}],
        }));
        assert_eq!(fields(t.clone()).len(), 2);
        let policy = TenantPolicy {
            allowed_capabilities: vec!["net_admin".into()],
            allowed_volume_types: vec!["csi".into()],
            ..Default::default()
        };
        assert!(build_pod(&t.to_string(), &owner(), &policy).is_ok());
    }

    #[test]
    fn every_refusal_names_a_fix() {
        let t = template(
            json!({"hostNetwork": true, "volumes": [{"name": "n", "nfs": {"server": "s", "path": "/"}}]}),
        );
        for viol in build_pod(&t.to_string(), &owner(), &TenantPolicy::default()).unwrap_err() {
            assert!(viol.to_string().contains("fix:"), "{viol}");
        }
    }

    #[test]
    fn a_template_that_is_not_a_pod_is_refused_not_a_panic() {
        for bad in [
            json!("x"),
            json!({"spec": 3}),
            json!({"metadata": {"name": 7}}),
            json!({}),
        ] {
            assert!(
                build_pod(&bad.to_string(), &owner(), &TenantPolicy::default()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn after_admission_the_default_tolerations_and_priority_are_not_the_tenants_doing() {
        let spec: PodSpec = serde_json::from_value(json!({
            "containers": [{"name": "app", "image": "x"}], "serviceAccountName": "default", "priority": 0,
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
        }))
        .unwrap();
        let none = BTreeMap::new();
        assert!(check(&spec, &none, &TenantPolicy::default(), Stage::Admitted).is_empty());
        let mut more = spec.clone();
        more.tolerations
            .as_mut()
            .unwrap()
            .push(serde_json::from_value(json!({"operator": "Exists"})).unwrap());
        assert_eq!(
            check(&more, &none, &TenantPolicy::default(), Stage::Admitted).len(),
            1
        );
        let mut system = spec;
        system.priority_class_name = Some("system-cluster-critical".into());
        assert_eq!(
            check(&system, &none, &TenantPolicy::default(), Stage::Admitted).len(),
            1
        );
    }
}
