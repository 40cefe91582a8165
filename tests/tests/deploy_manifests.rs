//! deploy/*.yaml and the Containerfile: every document valid for the
//! Kubernetes API (kubernetes-validate, strict), and what kxdp itself needs
//! from them, which no schema knows: read-only RBAC on exactly the watched
//! kinds, a DaemonSet that can load and pin the datapath, ConfigMap keys
//! that are real agent flags, an image holding only the binary. Each check
//! is also shown to refuse a broken copy, so none passes vacuously.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use serde::Deserialize as _;
use serde_norway::Value;

/// The API version the documents are validated against: the one the agent
/// is built against (k8s-openapi's `v1_33`).
const KUBERNETES_VERSION: &str = "1.33";
const CAPABILITIES: [&str; 4] = ["BPF", "NET_ADMIN", "SYS_ADMIN", "PERFMON"];
const HEALTH_PORT: u64 = 10256;
/// Where the Containerfile installs the binary; the DaemonSet runs it.
const BINARY: &str = "/usr/local/bin/kxdp";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every deploy/*.yaml, sorted; both install variants must be among them.
fn deploy_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(workspace().join("deploy"))
        .expect("deploy/")
        .map(|entry| entry.expect("deploy/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    for name in ["kxdp.yaml", "kxdp-privileged.yaml"] {
        assert!(
            files.iter().any(|f| f.ends_with(name)),
            "deploy/{name} missing"
        );
    }
    files
}

fn documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("YAML document"))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The value at a dotted path; numbers index sequences.
fn at<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, key| match key.parse() {
        Ok(i) => v.get::<usize>(i),
        Err(_) => v.get(key),
    })
}

fn str_at<'a>(value: &'a Value, path: &str) -> &'a str {
    at(value, path).and_then(Value::as_str).unwrap_or_default()
}

fn strings(value: Option<&Value>) -> Vec<&str> {
    value
        .and_then(Value::as_sequence)
        .map(|seq| seq.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

/// A named way to break a document, for the checks' negative cases.
type Breakage = (&'static str, fn(&mut Value));

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let mut found = docs.iter().filter(|d| str_at(d, "kind") == kind);
    let doc = found.next().unwrap_or_else(|| panic!("no {kind}"));
    assert!(found.next().is_none(), "more than one {kind}");
    doc
}

fn kind_mut<'a>(docs: &'a mut [Value], kind: &str) -> &'a mut Value {
    docs.iter_mut()
        .find(|d| str_at(d, "kind") == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

// ---- kubernetes-validate --------------------------------------------------

/// `cargo xtask test` passes the one its set-up installed; run alone, the
/// test looks where the set-up puts it.
fn validator() -> PathBuf {
    let path = std::env::var_os("KXDP_KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/py-venv/bin/kubernetes-validate"));
    assert!(
        path.is_file(),
        "kubernetes-validate not found at {}: run `cargo xtask setup` (it installs it there)",
        path.display()
    );
    path
}

/// Strict validation of one file. kubernetes-validate only warns, and exits
/// 0, for a kind it has no schema for (a misspelt kind), so besides its exit
/// code every document must have its own "passed" line.
fn validate(file: &Path) -> Result<(), String> {
    let output = Command::new(validator())
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .arg(file)
        .output()
        .expect("running kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let passed = text.lines().filter(|l| l.contains(" passed for ")).count();
    let expected = documents(&read(file)).len();
    ensure(output.status.success() && passed == expected, || {
        format!(
            "{}: {passed} of {expected} documents valid ({}):\n{text}",
            file.display(),
            output.status
        )
    })
}

#[test]
fn every_document_is_valid_for_the_kubernetes_api() {
    for file in deploy_files() {
        validate(&file).unwrap();
    }
    // Broken copies of kxdp.yaml: an unknown field, a wrong type, a kind
    // that does not exist.
    let good = read(&workspace().join("deploy/kxdp.yaml"));
    let dir = std::env::temp_dir().join(format!("kxdp-deploy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bad) in [
        (
            "unknown field",
            good.replace("hostNetwork:", "hostNetworking:"),
        ),
        (
            "wrong type",
            good.replace("containerPort: 10256", "containerPort: healthz"),
        ),
        (
            "unknown kind",
            good.replace("kind: DaemonSet", "kind: DeamonSet"),
        ),
    ] {
        assert_ne!(bad, good, "{name}: the replacement matched nothing");
        let file = dir.join("bad.yaml");
        std::fs::write(&file, bad).unwrap();
        assert!(validate(&file).is_err(), "{name} passed validation");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- RBAC -----------------------------------------------------------------

/// The ClusterRole grants get, list and watch on Services, EndpointSlices and
/// Nodes, and nothing else: no wildcard, other verb, resource, name
/// restriction or non-resource URL; and it is bound to the DaemonSet's
/// ServiceAccount.
fn check_rbac(docs: &[Value]) -> Result<(), String> {
    let role = kind(docs, "ClusterRole");
    let rules = at(role, "rules")
        .and_then(Value::as_sequence)
        .ok_or("ClusterRole without rules")?;
    let mut granted = BTreeSet::new();
    for rule in rules {
        let keys: Vec<&str> = rule
            .as_mapping()
            .map(|m| m.keys().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        ensure(
            keys.iter()
                .all(|k| ["apiGroups", "resources", "verbs"].contains(k)),
            || format!("rule with {keys:?}"),
        )?;
        for group in strings(rule.get("apiGroups")) {
            for resource in strings(rule.get("resources")) {
                for verb in strings(rule.get("verbs")) {
                    granted.insert((group, resource, verb));
                }
            }
        }
    }
    let mut expected = BTreeSet::new();
    for (group, resource) in [
        ("", "services"),
        ("", "nodes"),
        ("discovery.k8s.io", "endpointslices"),
    ] {
        for verb in ["get", "list", "watch"] {
            expected.insert((group, resource, verb));
        }
    }
    ensure(granted == expected, || {
        format!("ClusterRole grants {granted:?}, expected {expected:?}")
    })?;

    let binding = kind(docs, "ClusterRoleBinding");
    let account = kind(docs, "ServiceAccount");
    let pod = &kind(docs, "DaemonSet")["spec"]["template"]["spec"];
    ensure(
        str_at(binding, "roleRef.kind") == "ClusterRole"
            && str_at(binding, "roleRef.name") == str_at(role, "metadata.name"),
        || "the binding names another role".into(),
    )?;
    let subject = at(binding, "subjects.0").ok_or("binding without subject")?;
    ensure(
        str_at(subject, "kind") == "ServiceAccount"
            && str_at(subject, "name") == str_at(account, "metadata.name")
            && str_at(subject, "namespace") == str_at(account, "metadata.namespace")
            && str_at(pod, "serviceAccountName") == str_at(account, "metadata.name"),
        || "the DaemonSet's ServiceAccount is not the bound one".into(),
    )
}

#[test]
fn the_cluster_role_only_reads_services_slices_and_nodes() {
    for file in deploy_files() {
        check_rbac(&documents(&read(&file))).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    }
    let good = read(&workspace().join("deploy/kxdp.yaml"));
    let broken: [Breakage; 6] = [
        ("a write verb", |r| {
            push(&mut r["rules"][0]["verbs"], "create")
        }),
        ("a wildcard verb", |r| {
            push(&mut r["rules"][0]["verbs"], "*")
        }),
        ("a wildcard resource", |r| {
            push(&mut r["rules"][0]["resources"], "*")
        }),
        ("secrets", |r| {
            push(&mut r["rules"][0]["resources"], "secrets")
        }),
        ("a missing resource", |r| {
            r["rules"][1]["resources"] = Value::Sequence(vec![])
        }),
        ("a non-resource URL", |r| {
            r["rules"][0]["nonResourceURLs"] = Value::Sequence(vec!["/metrics".into()])
        }),
    ];
    for (name, breaks) in broken {
        let mut docs = documents(&good);
        breaks(kind_mut(&mut docs, "ClusterRole"));
        assert!(
            check_rbac(&docs).is_err(),
            "a ClusterRole with {name} passed"
        );
    }
    let mut docs = documents(&good);
    kind_mut(&mut docs, "ClusterRoleBinding")["subjects"][0]["name"] = "default".into();
    assert!(
        check_rbac(&docs).is_err(),
        "a binding to another account passed"
    );
}

fn push(sequence: &mut Value, item: &str) {
    sequence
        .as_sequence_mut()
        .expect("a sequence")
        .push(item.into());
}

// ---- DaemonSet ------------------------------------------------------------

/// The container's mount of the host directory `host_path`, and the volume.
fn host_mount<'a>(pod: &'a Value, host_path: &str) -> Result<(&'a Value, &'a Value), String> {
    let volumes = at(pod, "volumes").and_then(Value::as_sequence);
    let volume = volumes
        .into_iter()
        .flatten()
        .find(|v| str_at(v, "hostPath.path") == host_path)
        .ok_or_else(|| format!("no hostPath volume {host_path}"))?;
    let mounts = at(pod, "containers.0.volumeMounts").and_then(Value::as_sequence);
    let mount = mounts
        .into_iter()
        .flatten()
        .find(|m| str_at(m, "name") == str_at(volume, "name"))
        .ok_or_else(|| format!("hostPath {host_path} not mounted"))?;
    Ok((volume, mount))
}

/// What the agent needs to load, attach, pin and report on every node.
fn check_daemon_set(docs: &[Value]) -> Result<(), String> {
    let set = kind(docs, "DaemonSet");
    let pod = at(set, "spec.template.spec").ok_or("DaemonSet without a pod")?;
    let containers = at(pod, "containers").and_then(Value::as_sequence);
    ensure(containers.is_some_and(|c| c.len() == 1), || {
        "not exactly one container".into()
    })?;
    let container = &pod["containers"][0];

    ensure(at(pod, "hostNetwork") == Some(&true.into()), || {
        "hostNetwork is not true".into()
    })?;
    ensure(
        str_at(pod, "dnsPolicy") == "ClusterFirstWithHostNet",
        || "dnsPolicy is not ClusterFirstWithHostNet".into(),
    )?;
    ensure(
        str_at(pod, "priorityClassName") == "system-node-critical",
        || "priorityClassName is not system-node-critical".into(),
    )?;
    let tolerate_all: Value = serde_norway::from_str("operator: Exists").unwrap();
    ensure(
        at(pod, "tolerations")
            .and_then(Value::as_sequence)
            .is_some_and(|t| t.contains(&tolerate_all)),
        || "no toleration of every taint (operator: Exists)".into(),
    )?;
    ensure(
        str_at(set, "spec.updateStrategy.type") == "RollingUpdate"
            && at(set, "spec.updateStrategy.rollingUpdate.maxUnavailable") == Some(&1.into()),
        || "update strategy is not RollingUpdate, maxUnavailable 1".into(),
    )?;
    ensure(
        at(pod, "terminationGracePeriodSeconds")
            .and_then(Value::as_u64)
            .is_some_and(|s| s <= 30),
        || "terminationGracePeriodSeconds missing or above 30".into(),
    )?;

    let command: Vec<&str> = strings(container.get("command"))
        .into_iter()
        .chain(strings(container.get("args")))
        .collect();
    ensure(command == [BINARY, "agent"], || {
        format!("container runs {command:?}, not {BINARY} agent")
    })?;
    let env = at(container, "env").and_then(Value::as_sequence);
    let node_name = env
        .into_iter()
        .flatten()
        .find(|e| str_at(e, "name") == "KXDP_NODE_NAME");
    ensure(
        node_name.is_some_and(|e| str_at(e, "valueFrom.fieldRef.fieldPath") == "spec.nodeName"),
        || "KXDP_NODE_NAME not from the downward API's spec.nodeName".into(),
    )?;
    let config = kind(docs, "ConfigMap");
    ensure(
        str_at(container, "envFrom.0.configMapRef.name") == str_at(config, "metadata.name"),
        || "the ConfigMap is not the container's envFrom".into(),
    )?;

    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = at(container, &format!("{probe}.httpGet"));
        ensure(
            get.is_some_and(|g| {
                str_at(g, "path") == path && at(g, "port") == Some(&HEALTH_PORT.into())
            }),
            || format!("{probe} is not GET {path} on port {HEALTH_PORT}"),
        )?;
    }
    for resource in ["requests.cpu", "requests.memory", "limits.memory"] {
        ensure(
            at(container, &format!("resources.{resource}")).is_some(),
            || format!("no {resource}"),
        )?;
    }

    // Capabilities, or privileged; the API allows Bidirectional mount
    // propagation only to a privileged container.
    let privileged = at(container, "securityContext.privileged") == Some(&true.into());
    let added = strings(at(container, "securityContext.capabilities.add"));
    ensure(
        privileged || CAPABILITIES.iter().all(|c| added.contains(c)),
        || format!("capabilities {added:?} lack some of {CAPABILITIES:?}"),
    )?;
    let (bpffs, bpffs_mount) = host_mount(pod, "/sys/fs/bpf")?;
    let propagation = str_at(bpffs_mount, "mountPropagation");
    ensure(
        str_at(bpffs, "hostPath.type") == "DirectoryOrCreate"
            && str_at(bpffs_mount, "mountPath") == "/sys/fs/bpf",
        || "/sys/fs/bpf is not mounted at /sys/fs/bpf (DirectoryOrCreate)".into(),
    )?;
    // Without propagation from the host, pins would land in a private bpffs
    // mounted later and vanish with the pod.
    ensure(
        propagation == "HostToContainer" || (propagation == "Bidirectional" && privileged),
        || format!("bpffs mountPropagation {propagation:?} (privileged: {privileged})"),
    )?;
    let (_, cgroup_mount) = host_mount(pod, "/sys/fs/cgroup")?;
    let cgroup_path = str_at(config, "data.KXDP_CGROUP_PATH");
    ensure(
        cgroup_path.is_empty() || str_at(cgroup_mount, "mountPath") == cgroup_path,
        || "KXDP_CGROUP_PATH is not where the cgroup root is mounted".into(),
    )?;

    // The kubelet probes the pod's (the node's) address on the probe port:
    // the agent must listen there, on every address.
    let health_addr = str_at(config, "data.KXDP_HEALTH_ADDR");
    ensure(
        health_addr.is_empty() || health_addr == format!("0.0.0.0:{HEALTH_PORT}"),
        || format!("KXDP_HEALTH_ADDR {health_addr:?} is not what the probes reach"),
    )?;

    let namespace = str_at(kind(docs, "Namespace"), "metadata.name");
    for namespaced in ["ServiceAccount", "ConfigMap", "DaemonSet"] {
        ensure(
            str_at(kind(docs, namespaced), "metadata.namespace") == namespace,
            || format!("the {namespaced} is not in namespace {namespace}"),
        )?;
    }
    Ok(())
}

#[test]
fn the_daemon_set_can_run_the_agent_on_every_node() {
    for file in deploy_files() {
        check_daemon_set(&documents(&read(&file)))
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    }
    let good = read(&workspace().join("deploy/kxdp.yaml"));
    let broken: [Breakage; 14] = [
        ("no hostNetwork", |p| p["hostNetwork"] = false.into()),
        ("the default dnsPolicy", |p| {
            p["dnsPolicy"] = "ClusterFirst".into()
        }),
        ("no toleration", |p| p["tolerations"] = Value::Null),
        ("no priority class", |p| {
            p["priorityClassName"] = Value::Null
        }),
        ("a long grace period", |p| {
            p["terminationGracePeriodSeconds"] = 300.into()
        }),
        ("another command", |p| {
            p["containers"][0]["command"][1] = "services".into()
        }),
        ("a node name not from the downward API", |p| {
            p["containers"][0]["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] =
                "metadata.name".into()
        }),
        ("a readiness probe on /healthz", |p| {
            p["containers"][0]["readinessProbe"]["httpGet"]["path"] = "/healthz".into()
        }),
        ("no liveness probe", |p| {
            p["containers"][0]["livenessProbe"] = Value::Null
        }),
        ("no memory limit", |p| {
            p["containers"][0]["resources"]["limits"] = Value::Null
        }),
        ("a missing capability", |p| {
            p["containers"][0]["securityContext"]["capabilities"]["add"] =
                serde_norway::from_str("[BPF, NET_ADMIN, SYS_ADMIN]").unwrap()
        }),
        ("Bidirectional unprivileged", |p| {
            p["containers"][0]["volumeMounts"][0]["mountPropagation"] = "Bidirectional".into()
        }),
        ("no cgroup mount", |p| {
            p["volumes"][1]["hostPath"]["path"] = "/sys/fs/cgroup/unified".into()
        }),
        ("bpffs mounted elsewhere", |p| {
            p["containers"][0]["volumeMounts"][0]["mountPath"] = "/bpf".into()
        }),
    ];
    for (name, breaks) in broken {
        let mut docs = documents(&good);
        breaks(&mut kind_mut(&mut docs, "DaemonSet")["spec"]["template"]["spec"]);
        assert!(
            check_daemon_set(&docs).is_err(),
            "a DaemonSet with {name} passed"
        );
    }
    for addr in ["127.0.0.1:10256", "0.0.0.0:10257"] {
        let mut docs = documents(&good);
        kind_mut(&mut docs, "ConfigMap")["data"]["KXDP_HEALTH_ADDR"] = addr.into();
        assert!(
            check_daemon_set(&docs).is_err(),
            "KXDP_HEALTH_ADDR {addr} passed"
        );
    }
    let mut docs = documents(&good);
    kind_mut(&mut docs, "DaemonSet")["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] =
        "100%".into();
    assert!(
        check_daemon_set(&docs).is_err(),
        "maxUnavailable 100% passed"
    );
}

// ---- ConfigMap keys and agent flags -----------------------------------------

/// The `KXDP_*` environment twins declared in the CLI (`env = "KXDP_…"`).
fn flag_env_names() -> BTreeSet<String> {
    let cli = read(&workspace().join("proxy-userspace/src/cli.rs"));
    cli.split("env = \"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .filter(|name| name.starts_with("KXDP_"))
        .map(str::to_owned)
        .collect()
}

/// Variables the agent reads that are not its flags: the log filter and the
/// in-cluster client's API server address.
const OTHER_AGENT_VARIABLES: [&str; 3] = [
    "RUST_LOG",
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT",
];

/// Every variable the ConfigMap and the container set is one the agent
/// reads, and the required --pod-interfaces is among them.
fn check_agent_variables(docs: &[Value], flags: &BTreeSet<String>) -> Result<(), String> {
    let data = at(kind(docs, "ConfigMap"), "data")
        .and_then(Value::as_mapping)
        .ok_or("ConfigMap without data")?;
    let container = &kind(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0];
    let env = at(container, "env").and_then(Value::as_sequence);
    let names: Vec<&str> = data
        .keys()
        .filter_map(Value::as_str)
        .chain(env.into_iter().flatten().map(|e| str_at(e, "name")))
        .collect();
    for name in &names {
        ensure(
            flags.contains(*name) || OTHER_AGENT_VARIABLES.contains(name),
            || format!("{name} is no agent flag's environment twin"),
        )?;
    }
    ensure(names.contains(&"KXDP_POD_INTERFACES"), || {
        "KXDP_POD_INTERFACES (required) is not set".into()
    })
}

#[test]
fn config_map_keys_are_agent_flags() {
    let flags = flag_env_names();
    for name in ["KXDP_NODE_NAME", "KXDP_POD_INTERFACES", "KXDP_LOG_LEVEL"] {
        assert!(
            flags.contains(name),
            "{name} not found in cli.rs: {flags:?}"
        );
    }
    for file in deploy_files() {
        check_agent_variables(&documents(&read(&file)), &flags)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    }
    let good = read(&workspace().join("deploy/kxdp.yaml"));
    for (name, bad) in [
        ("a misspelt flag", "KXDP_NODEPORT_ADDRESS: \"10.0.0.0/8\""),
        ("no pod interfaces", "KXDP_POD_INTERFACE: \"veth*\""),
    ] {
        let bad = good.replace("KXDP_POD_INTERFACES: \"veth*,cali*\"", bad);
        assert_ne!(bad, good);
        assert!(
            check_agent_variables(&documents(&bad), &flags).is_err(),
            "{name} passed"
        );
    }
}

// ---- the privileged variant -------------------------------------------------

/// kxdp-privileged.yaml is kxdp.yaml with a privileged container and
/// Bidirectional bpffs propagation, and nothing else changed.
fn check_privileged_variant(base: &[Value], privileged: &[Value]) -> Result<(), String> {
    let mut expected = base.to_vec();
    let container =
        &mut kind_mut(&mut expected, "DaemonSet")["spec"]["template"]["spec"]["containers"][0];
    container["securityContext"] = serde_norway::from_str("privileged: true").unwrap();
    container["volumeMounts"][0]["mountPropagation"] = "Bidirectional".into();
    ensure(expected == privileged, || {
        "kxdp-privileged.yaml differs from kxdp.yaml beyond securityContext and bpffs propagation"
            .into()
    })
}

#[test]
fn the_privileged_variant_differs_only_in_privilege() {
    let base = documents(&read(&workspace().join("deploy/kxdp.yaml")));
    let privileged = documents(&read(&workspace().join("deploy/kxdp-privileged.yaml")));
    check_privileged_variant(&base, &privileged).unwrap();
    let mut drifted = privileged.clone();
    kind_mut(&mut drifted, "ConfigMap")["data"]["KXDP_LOG_LEVEL"] = "debug".into();
    assert!(check_privileged_variant(&base, &drifted).is_err());
}

// ---- Containerfile ------------------------------------------------------------

/// Instructions as (keyword, arguments): comments dropped, continued lines
/// joined.
fn instructions(containerfile: &str) -> Vec<(String, String)> {
    let mut joined = String::new();
    for line in containerfile.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(continued) => joined.push_str(continued),
            None => {
                joined.push_str(line);
                joined.push('\n');
            }
        }
    }
    joined
        .lines()
        .map(|line| {
            let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            (keyword.to_uppercase(), args.trim().to_owned())
        })
        .collect()
}

/// A builder stage that installs the eBPF toolchain and builds the agent, and
/// a runtime stage (the last) that copies in the kxdp binary alone and runs
/// it.
fn check_containerfile(text: &str) -> Result<(), String> {
    let mut stages: Vec<Vec<(String, String)>> = Vec::new();
    for instruction in instructions(text) {
        if instruction.0 == "FROM" {
            stages.push(Vec::new());
        }
        stages
            .last_mut()
            .ok_or("an instruction before the first FROM")?
            .push(instruction);
    }
    ensure(stages.len() >= 2, || "fewer than two stages".into())?;
    let from: Vec<&str> = stages[0][0].1.split_whitespace().collect();
    let builder = match from[..] {
        [_, alias, name] if alias.eq_ignore_ascii_case("as") => name,
        _ => return Err("the first stage is not named (FROM IMAGE AS NAME)".into()),
    };
    let runs: Vec<&str> = stages[0]
        .iter()
        .filter(|(k, _)| k == "RUN")
        .map(|(_, a)| a.as_str())
        .collect();
    for needed in ["bpf-linker", "rust-src", "cargo build --release"] {
        ensure(runs.iter().any(|r| r.contains(needed)), || {
            format!("the builder runs nothing with {needed:?}")
        })?;
    }
    ensure(
        runs.iter()
            .any(|r| r.contains("cargo build") && r.contains("-p proxy-userspace")),
        || "the builder does not build proxy-userspace".into(),
    )?;

    let runtime = stages.last().expect("two stages");
    let copies: Vec<&str> = runtime
        .iter()
        .filter(|(k, _)| k == "COPY" || k == "ADD")
        .map(|(_, a)| a.as_str())
        .collect();
    let copy: Vec<&str> = copies
        .first()
        .map(|c| c.split_whitespace().collect())
        .unwrap_or_default();
    ensure(
        copies.len() == 1
            && copy.len() == 3
            && copy[0] == format!("--from={builder}")
            && copy[1].ends_with("/target/release/kxdp")
            && copy[2] == BINARY,
        || format!("the runtime stage copies {copies:?}, not the kxdp binary alone to {BINARY}"),
    )?;
    ensure(!runtime.iter().any(|(k, _)| k == "RUN"), || {
        "the runtime stage runs commands".into()
    })?;
    let exec_form = |keyword: &str| -> Option<Vec<String>> {
        let (_, args) = runtime.iter().rev().find(|(k, _)| k == keyword)?;
        serde_json::from_str(args).ok()
    };
    ensure(
        exec_form("ENTRYPOINT") == Some(vec![BINARY.to_owned()]),
        || format!("ENTRYPOINT is not [\"{BINARY}\"] in exec form"),
    )?;
    ensure(exec_form("CMD") == Some(vec!["agent".to_owned()]), || {
        "CMD is not [\"agent\"]".into()
    })
}

#[test]
fn the_image_holds_only_the_agent() {
    let good = read(&workspace().join("Containerfile"));
    check_containerfile(&good).unwrap();
    for (name, from, to) in [
        ("an unnamed builder", " AS builder", ""),
        ("no eBPF linker", "cargo install bpf-linker", "true"),
        (
            "the whole target directory",
            "/src/target/release/kxdp ",
            "/src/target ",
        ),
        (
            "a shell-form ENTRYPOINT",
            "ENTRYPOINT [\"/usr/local/bin/kxdp\"]",
            "ENTRYPOINT /usr/local/bin/kxdp",
        ),
        ("another command", "CMD [\"agent\"]", "CMD [\"services\"]"),
        (
            "the sources in the runtime image",
            "ENTRYPOINT",
            "COPY . /src\nENTRYPOINT",
        ),
    ] {
        let bad = good.replace(from, to);
        assert_ne!(bad, good, "{name}: the replacement matched nothing");
        assert!(check_containerfile(&bad).is_err(), "{name} passed");
    }
}
