//! The deployment files under `deploy/` agree with the gateway and with each other.
//!
//! Every YAML file parses; every config under `deploy/` passes `exagate check` (the built
//! binary, so it is the gateway's own validation); and every number the Dockerfile, the
//! systemd unit and the Kubernetes manifests copy from a config (ports, drain and
//! shutdown times, the key's path, memory sized from the cache) is read from the
//! effective config that `check` prints and compared. The same goes for the replicas that
//! share one Redis: the kustomize overlay `deploy/kubernetes-overlays/shared` and the
//! Compose file `deploy/compose.yaml` with its nginx balancer. No network, no Docker:
//! when `kubectl` is on the PATH the kustomize base and the overlay are also rendered,
//! which is local.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use yaml_rust2::{Yaml, YamlLoader};

const BIN: &str = env!("CARGO_BIN_EXE_exagate");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// A stand-in key: `check` needs one to load, and it must never matter which.
const KEY: &str = "deploy-test-key";
/// The Compose file for trying replicas with Redis on a laptop.
const COMPOSE: &str = "deploy/compose.yaml";

// ---------------------------------------------------------------- files and parsing

/// A fresh directory under the system's temp dir, removed when dropped (pass or fail).
/// This file does not share `tests/common`; the prefix matches its `tempdir`.
fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("exagate-test-")
        .tempdir()
        .expect("create a temporary directory")
}

fn repo(rel: &str) -> PathBuf {
    Path::new(ROOT).join(rel)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every file under `dir` (recursively) whose name satisfies `keep`, sorted.
fn files_under(dir: &Path, keep: &dyn Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if keep(&path) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

fn has_ext(path: &Path, exts: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| exts.contains(&e))
}

/// All documents of a YAML file; a parse error fails the test naming the file.
fn yaml_docs(path: &Path) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

/// The one document of a single-document YAML file.
fn yaml_doc(path: &Path) -> Yaml {
    let mut docs = yaml_docs(path);
    assert_eq!(docs.len(), 1, "{}: expected one document", path.display());
    docs.remove(0)
}

/// Walks `keys` down from `y`; a missing key fails the test naming the whole path.
fn at<'a>(y: &'a Yaml, keys: &[&str]) -> &'a Yaml {
    let mut cur = y;
    for (i, key) in keys.iter().enumerate() {
        cur = &cur[*key];
        assert!(
            !cur.is_badvalue(),
            "missing `{}` in the manifest",
            keys[..=i].join(".")
        );
    }
    cur
}

fn str_at<'a>(y: &'a Yaml, keys: &[&str]) -> &'a str {
    at(y, keys)
        .as_str()
        .unwrap_or_else(|| panic!("`{}` is not a string", keys.join(".")))
}

fn int_at(y: &Yaml, keys: &[&str]) -> i64 {
    at(y, keys)
        .as_i64()
        .unwrap_or_else(|| panic!("`{}` is not an integer", keys.join(".")))
}

fn list_at<'a>(y: &'a Yaml, keys: &[&str]) -> &'a [Yaml] {
    at(y, keys)
        .as_vec()
        .unwrap_or_else(|| panic!("`{}` is not a list", keys.join(".")))
}

/// The list element whose `name` is `name`.
fn named<'a>(list: &'a [Yaml], name: &str) -> &'a Yaml {
    list.iter()
        .find(|item| item["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no item named `{name}`"))
}

/// A string-to-string mapping (labels, selectors); non-string values fail.
fn string_map(y: &Yaml, keys: &[&str]) -> BTreeMap<String, String> {
    let hash = at(y, keys)
        .as_hash()
        .unwrap_or_else(|| panic!("`{}` is not a mapping", keys.join(".")));
    hash.iter()
        .map(|(k, v)| {
            let k = k.as_str().expect("string key").to_string();
            let v = v
                .as_str()
                .unwrap_or_else(|| {
                    panic!(
                        "`{}.{k}` must be a string (quote it: Kubernetes rejects {v:?})",
                        keys.join(".")
                    )
                })
                .to_string();
            (k, v)
        })
        .collect()
}

fn assert_subset(part: &BTreeMap<String, String>, whole: &BTreeMap<String, String>, what: &str) {
    for (k, v) in part {
        assert_eq!(
            whole.get(k),
            Some(v),
            "{what}: {k}={v} is not among the pod's labels {whole:?}"
        );
    }
}

// ---------------------------------------------------------------- the gateway's view

/// The effective config of `path` as the gateway sees it: runs `exagate check` (which
/// fails on any invalid value or missing key) and parses the TOML it prints, defaults
/// included.
struct Effective {
    table: toml::Table,
}

impl Effective {
    fn check(path: &Path) -> Effective {
        let out = Command::new(BIN)
            .arg("check")
            .arg("--config")
            .arg(path)
            .env("EXABASE_API_KEY", KEY)
            .env_remove("EXAGATE_CONFIG")
            .output()
            .expect("run exagate check");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "exagate check --config {} failed:\n{}{stdout}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!stdout.contains(KEY), "check printed the key");
        let table = stdout
            .parse::<toml::Table>()
            .unwrap_or_else(|e| panic!("check's output is not TOML ({e}):\n{stdout}"));
        Effective { table }
    }

    /// A key of the effective config, if it has it (optional keys are left out).
    fn get(&self, section: &str, key: &str) -> Option<&toml::Value> {
        self.table.get(section).and_then(|s| s.get(key))
    }

    fn str(&self, section: &str, key: &str) -> &str {
        self.get(section, key)
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| panic!("effective config has no {section}.{key}"))
    }

    fn int(&self, section: &str, key: &str) -> i64 {
        self.get(section, key)
            .and_then(|v| v.as_integer())
            .unwrap_or_else(|| panic!("effective config has no integer {section}.{key}"))
    }

    fn addr(&self, section: &str, key: &str) -> SocketAddr {
        let text = self.str(section, key);
        text.parse()
            .unwrap_or_else(|e| panic!("{section}.{key} = {text:?}: {e}"))
    }

    fn duration(&self, section: &str, key: &str) -> Duration {
        let text = self.str(section, key);
        humantime::parse_duration(text)
            .unwrap_or_else(|e| panic!("{section}.{key} = {text:?}: {e}"))
    }

    fn size(&self, section: &str, key: &str) -> u64 {
        let text = self.str(section, key);
        text.parse::<bytesize::ByteSize>()
            .unwrap_or_else(|e| panic!("{section}.{key} = {text:?}: {e}"))
            .as_u64()
    }

    /// In a container or a pod, both listeners must take connections from outside the
    /// network namespace: published ports, the Service, the kubelet's probes.
    fn assert_listens_on_all_addresses(&self, what: &str) {
        for (section, key) in [("server", "listen"), ("admin", "listen")] {
            let addr = self.addr(section, key);
            assert!(
                addr.ip().is_unspecified(),
                "{what}: {section}.{key} = {addr} is unreachable from outside; use 0.0.0.0"
            );
        }
    }
}

/// `exagate check` for a config that reads the key from a file it cannot have here (a
/// systemd credential): a copy with `upstream.api_key_file` pointing at a temporary key
/// file. Returns the original `api_key_file` too, for the caller to compare.
fn check_with_key_file(path: &Path) -> (Effective, Option<String>) {
    let mut table: toml::Table = read(path)
        .parse()
        .unwrap_or_else(|e| panic!("{} is not TOML: {e}", path.display()));
    let original = table
        .get("upstream")
        .and_then(|u| u.get("api_key_file"))
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let Some(_) = original else {
        return (Effective::check(path), None);
    };
    let dir = tempdir();
    let key_file = dir.path().join("exabase-api-key");
    std::fs::write(&key_file, format!("{KEY}\n")).expect("write key");
    let upstream = table
        .get_mut("upstream")
        .and_then(|u| u.as_table_mut())
        .expect("[upstream]");
    upstream.insert(
        "api_key_file".into(),
        toml::Value::String(key_file.display().to_string()),
    );
    let copy = dir.path().join("config.toml");
    std::fs::write(&copy, toml::to_string(&table).expect("toml")).expect("write config");
    (Effective::check(&copy), original)
}

/// A Kubernetes quantity such as `384Mi`, `1Gi`, `500M`, in bytes.
fn k8s_bytes(text: &str) -> u64 {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let num: u64 = num.parse().unwrap_or_else(|_| panic!("quantity {text:?}"));
    let mult: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        other => panic!("unexpected unit {other:?} in {text:?}"),
    };
    num * mult
}

/// A systemd size such as `512M` (base 1024, as systemd reads it), in bytes.
fn systemd_bytes(text: &str) -> u64 {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let num: u64 = num.parse().unwrap_or_else(|_| panic!("size {text:?}"));
    let mult: u64 = match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        other => panic!("unexpected unit {other:?} in {text:?}"),
    };
    num * mult
}

// ---------------------------------------------------------------- YAML and configs

#[test]
fn every_yaml_file_under_deploy_parses_into_named_objects() {
    // Prometheus rule files are not Kubernetes objects: `tests/dashboards.rs` and
    // promtool (in `.ci/run`) check them.
    let rules = repo("deploy/prometheus");
    for file in files_under(&rules, &|p| has_ext(p, &["yaml", "yml"])) {
        assert!(
            !yaml_docs(&file).is_empty(),
            "{}: no document",
            file.display()
        );
    }
    // The Compose file is not Kubernetes objects either: the compose tests below read it.
    let compose = repo(COMPOSE);
    assert!(!yaml_docs(&compose).is_empty(), "{COMPOSE}: no document");
    let files = files_under(&repo("deploy"), &|p| {
        has_ext(p, &["yaml", "yml"]) && !p.starts_with(&rules) && p != compose
    });
    assert!(
        files.len() >= 5,
        "expected the kustomize base, found {files:?}"
    );
    for file in files {
        let docs = yaml_docs(&file);
        assert!(!docs.is_empty(), "{}: no document", file.display());
        for doc in &docs {
            assert!(
                doc.as_hash().is_some(),
                "{}: a document is not a mapping",
                file.display()
            );
            // Every object names its API and kind; resources also have a name.
            str_at(doc, &["apiVersion"]);
            let kind = str_at(doc, &["kind"]);
            if kind != "Kustomization" {
                assert!(
                    !str_at(doc, &["metadata", "name"]).is_empty(),
                    "{}",
                    file.display()
                );
            }
        }
    }
}

#[test]
fn every_config_under_deploy_passes_check() {
    let configs = files_under(&repo("deploy"), &|p| has_ext(p, &["toml"]));
    let names: Vec<_> = configs
        .iter()
        .map(|p| {
            p.strip_prefix(ROOT)
                .expect("under the repo")
                .display()
                .to_string()
        })
        .collect();
    for expected in [
        "deploy/docker/config.toml",
        "deploy/systemd/config.toml",
        "deploy/kubernetes/config.toml",
        "deploy/kubernetes-overlays/shared/config.toml",
        "deploy/compose/config.toml",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    for config in &configs {
        check_with_key_file(config);
    }
}

#[test]
fn check_refuses_a_broken_deploy_config() {
    // The checks above are only worth something if `check` can say no: the Kubernetes
    // config with an unknown key must fail.
    let dir = tempdir();
    let path = dir.path().join("config.toml");
    let text =
        read(&repo("deploy/kubernetes/config.toml")).replace("drain_delay =", "drain_delya =");
    std::fs::write(&path, text).expect("write");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .env("EXABASE_API_KEY", KEY)
        .output()
        .expect("run");
    assert!(!out.status.success(), "a misspelt key passed check");
}

// ---------------------------------------------------------------- Kubernetes

/// The kustomize base, read the way `kubectl kustomize` would, plus the config it
/// generates its ConfigMap from.
struct Base {
    dir: PathBuf,
    kustomization: Yaml,
    deployment: Yaml,
    service: Yaml,
    pdb: Yaml,
    secret: Yaml,
    /// Name given to the generated ConfigMap (before kustomize's hash suffix).
    configmap_name: String,
    config_path: PathBuf,
    config: Effective,
}

impl Base {
    fn load() -> Base {
        let dir = repo("deploy/kubernetes");
        let kustomization = yaml_doc(&dir.join("kustomization.yaml"));
        let resources: Vec<&str> = list_at(&kustomization, &["resources"])
            .iter()
            .map(|r| r.as_str().expect("resource path"))
            .collect();
        let mut by_kind: BTreeMap<String, Yaml> = BTreeMap::new();
        for resource in &resources {
            let path = dir.join(resource);
            assert!(path.is_file(), "kustomization lists missing {resource}");
            for doc in yaml_docs(&path) {
                let kind = str_at(&doc, &["kind"]).to_string();
                assert!(
                    by_kind.insert(kind.clone(), doc).is_none(),
                    "two {kind} objects"
                );
            }
        }
        // Every manifest beside it is applied, except the placeholder Secret, which
        // must not be: applying it would replace the real key with REPLACE_ME.
        let on_disk = files_under(&dir, &|p| has_ext(p, &["yaml", "yml"]));
        for path in &on_disk {
            let name = path.file_name().and_then(|n| n.to_str()).expect("name");
            if name == "kustomization.yaml" {
                continue;
            }
            let listed = resources.contains(&name);
            if name == "secret.yaml" {
                assert!(!listed, "secret.yaml must stay out of the kustomization");
            } else {
                assert!(listed, "{name} is not listed in kustomization resources");
            }
        }
        let generators = list_at(&kustomization, &["configMapGenerator"]);
        assert_eq!(generators.len(), 1, "one generated ConfigMap");
        let configmap_name = str_at(&generators[0], &["name"]).to_string();
        let files = list_at(&generators[0], &["files"]);
        assert_eq!(files.len(), 1, "the ConfigMap holds config.toml only");
        let entry = files[0].as_str().expect("file entry");
        // `key=path` or just `path` (the key is then the file name).
        let (key, file) = entry.split_once('=').unwrap_or((entry, entry));
        assert_eq!(
            Path::new(key).file_name().and_then(|n| n.to_str()),
            Some("config.toml"),
            "the ConfigMap key must be config.toml"
        );
        let config_path = dir.join(file);
        let config = Effective::check(&config_path);
        let mut take = |kind: &str| {
            by_kind
                .remove(kind)
                .unwrap_or_else(|| panic!("no {kind} in the kustomization's resources"))
        };
        Base {
            deployment: take("Deployment"),
            service: take("Service"),
            pdb: take("PodDisruptionBudget"),
            secret: yaml_doc(&dir.join("secret.yaml")),
            dir,
            kustomization,
            configmap_name,
            config_path,
            config,
        }
    }

    fn pod(&self) -> &Yaml {
        at(&self.deployment, &["spec", "template", "spec"])
    }

    fn container(&self) -> &Yaml {
        named(list_at(self.pod(), &["containers"]), "exagate")
    }

    /// Container ports by name.
    fn ports(&self) -> BTreeMap<String, i64> {
        list_at(self.container(), &["ports"])
            .iter()
            .map(|p| {
                (
                    str_at(p, &["name"]).to_string(),
                    int_at(p, &["containerPort"]),
                )
            })
            .collect()
    }

    /// A port given by name or number, as a number.
    fn resolve_port(&self, port: &Yaml) -> i64 {
        match (port.as_i64(), port.as_str()) {
            (Some(n), _) => n,
            (None, Some(name)) => *self
                .ports()
                .get(name)
                .unwrap_or_else(|| panic!("no container port named {name}")),
            _ => panic!("a port is neither a name nor a number: {port:?}"),
        }
    }

    fn pre_stop_seconds(&self) -> i64 {
        int_at(
            self.container(),
            &["lifecycle", "preStop", "sleep", "seconds"],
        )
    }

    fn pod_labels(&self) -> BTreeMap<String, String> {
        string_map(
            &self.deployment,
            &["spec", "template", "metadata", "labels"],
        )
    }
}

#[test]
fn the_kubernetes_config_listens_where_pods_are_reached() {
    let base = Base::load();
    base.config
        .assert_listens_on_all_addresses("deploy/kubernetes/config.toml");
    assert_eq!(base.config.str("log", "format"), "json");
}

#[test]
fn deployment_ports_are_the_configs_listeners() {
    let base = Base::load();
    let ports = base.ports();
    assert_eq!(
        ports.get("http").copied(),
        Some(i64::from(base.config.addr("server", "listen").port())),
        "containerPort http vs server.listen"
    );
    assert_eq!(
        ports.get("admin").copied(),
        Some(i64::from(base.config.addr("admin", "listen").port())),
        "containerPort admin vs admin.listen"
    );
    assert_eq!(ports.len(), 2, "only http and admin: {ports:?}");
}

#[test]
fn probes_hit_the_admin_ports_health_routes() {
    let base = Base::load();
    let admin = i64::from(base.config.addr("admin", "listen").port());
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = at(base.container(), &[probe, "httpGet"]);
        assert_eq!(str_at(get, &["path"]), path, "{probe}");
        assert_eq!(base.resolve_port(at(get, &["port"])), admin, "{probe} port");
    }
}

#[test]
fn shutdown_times_fit_the_grace_period() {
    let base = Base::load();
    let drain = base.config.duration("server", "drain_delay");
    let shutdown = base.config.duration("server", "shutdown_timeout");
    let pre_stop = base.pre_stop_seconds();
    assert_eq!(
        Duration::from_secs(u64::try_from(pre_stop).expect("positive")),
        drain,
        "preStop sleep vs server.drain_delay"
    );
    // The grace period runs from the delete: the preStop pause counts against it,
    // then the gateway's drain, then in-flight requests.
    let needed = Duration::from_secs(u64::try_from(pre_stop).expect("positive")) + drain + shutdown;
    let grace = int_at(base.pod(), &["terminationGracePeriodSeconds"]);
    assert!(
        Duration::from_secs(u64::try_from(grace).expect("positive")) > needed,
        "terminationGracePeriodSeconds {grace} must exceed {needed:?}"
    );
}

#[test]
fn prometheus_scrapes_the_admin_port() {
    let base = Base::load();
    let annotations = string_map(
        &base.deployment,
        &["spec", "template", "metadata", "annotations"],
    );
    assert_eq!(
        annotations.get("prometheus.io/scrape").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        annotations.get("prometheus.io/path").map(String::as_str),
        Some("/metrics")
    );
    let port: u16 = annotations
        .get("prometheus.io/port")
        .expect("prometheus.io/port")
        .parse()
        .expect("a port number");
    assert_eq!(port, base.config.addr("admin", "listen").port());
}

#[test]
fn the_service_exposes_the_gateway_only_at_public_url() {
    let base = Base::load();
    let svc = &base.service;
    if let Some(kind) = svc["spec"]["type"].as_str() {
        assert_eq!(kind, "ClusterIP");
    }
    assert_subset(
        &string_map(svc, &["spec", "selector"]),
        &base.pod_labels(),
        "Service selector",
    );
    let ports = list_at(svc, &["spec", "ports"]);
    assert_eq!(ports.len(), 1, "the admin port stays out of the Service");
    let http = i64::from(base.config.addr("server", "listen").port());
    assert_eq!(base.resolve_port(at(&ports[0], &["targetPort"])), http);

    // server.public_url is the Service's cluster DNS name and port, so rewritten links
    // lead back through the Service.
    let public: http::Uri = base
        .config
        .str("server", "public_url")
        .parse()
        .expect("public_url");
    let namespace = str_at(&base.kustomization, &["namespace"]);
    let expected_host = format!(
        "{}.{namespace}.svc.cluster.local",
        str_at(svc, &["metadata", "name"])
    );
    assert_eq!(public.scheme_str(), Some("http"));
    assert_eq!(public.host(), Some(expected_host.as_str()));
    let service_port = int_at(&ports[0], &["port"]);
    assert_eq!(i64::from(public.port_u16().unwrap_or(80)), service_port);
}

#[test]
fn the_deployment_reads_the_generated_config_and_the_secret() {
    let base = Base::load();
    let container = base.container();

    // --config names the file where the ConfigMap volume puts config.toml.
    let args: Vec<&str> = list_at(container, &["args"])
        .iter()
        .map(|a| a.as_str().expect("string arg"))
        .collect();
    let at_flag = args
        .iter()
        .position(|a| *a == "--config")
        .expect("--config");
    let config_arg = Path::new(args.get(at_flag + 1).expect("a path after --config"));
    let mount = list_at(container, &["volumeMounts"])
        .iter()
        .find(|m| Some(Path::new(str_at(m, &["mountPath"]))) == config_arg.parent())
        .expect("a volume mounted at the --config directory");
    assert_eq!(
        config_arg.file_name().and_then(|n| n.to_str()),
        Some("config.toml")
    );
    let volume = named(list_at(base.pod(), &["volumes"]), str_at(mount, &["name"]));
    assert_eq!(str_at(volume, &["configMap", "name"]), base.configmap_name);

    // The variables the config reads come from the Secret, under keys it has.
    let secret_name = str_at(&base.secret, &["metadata", "name"]);
    let secret_keys = string_map(&base.secret, &["stringData"]);
    for value in secret_keys.values() {
        assert_eq!(
            value, "REPLACE_ME",
            "no real value in the placeholder Secret"
        );
    }
    let env = list_at(container, &["env"]);
    for (var, optional) in [
        (base.config.str("upstream", "api_key_env"), false),
        (base.config.str("admin", "token_env"), true),
    ] {
        let reference = at(named(env, var), &["valueFrom", "secretKeyRef"]);
        assert_eq!(str_at(reference, &["name"]), secret_name, "{var}");
        let key = str_at(reference, &["key"]);
        assert!(secret_keys.contains_key(key), "{var}: Secret has no {key}");
        assert_eq!(
            reference["optional"].as_bool().unwrap_or(false),
            optional,
            "{var}: optional"
        );
    }
    let namespace = str_at(&base.kustomization, &["namespace"]);
    assert_eq!(str_at(&base.secret, &["metadata", "namespace"]), namespace);
    assert!(base.config_path.starts_with(&base.dir));
}

#[test]
fn the_deployment_is_locked_down() {
    let base = Base::load();
    let pod_sc = at(base.pod(), &["securityContext"]);
    let sc = at(base.container(), &["securityContext"]);
    let either = |key: &str| {
        let c = &sc[key];
        if c.is_badvalue() {
            pod_sc[key].clone()
        } else {
            c.clone()
        }
    };
    assert_eq!(either("runAsNonRoot").as_bool(), Some(true));
    let uid = either("runAsUser").as_i64().expect("a numeric runAsUser");
    assert_ne!(uid, 0);
    assert_eq!(uid, dockerfile_user().0, "runAsUser vs the image's USER");
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    let dropped: Vec<&str> = list_at(sc, &["capabilities", "drop"])
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(dropped, ["ALL"]);
    assert_eq!(
        either("seccompProfile")["type"].as_str(),
        Some("RuntimeDefault")
    );
    assert_eq!(
        base.pod()["automountServiceAccountToken"].as_bool(),
        Some(false)
    );
}

#[test]
fn replicas_selectors_and_disruption_budget_agree() {
    let base = Base::load();
    let replicas = int_at(&base.deployment, &["spec", "replicas"]);
    assert!(replicas >= 2, "replicas {replicas}");
    let pod_labels = base.pod_labels();
    assert_subset(
        &string_map(&base.deployment, &["spec", "selector", "matchLabels"]),
        &pod_labels,
        "Deployment selector",
    );
    assert_subset(
        &string_map(&base.pdb, &["spec", "selector", "matchLabels"]),
        &pod_labels,
        "PDB selector",
    );
    // The budget must leave room for a drain and keep at least one pod.
    let spec = at(&base.pdb, &["spec"]);
    match (
        spec["maxUnavailable"].as_i64(),
        spec["minAvailable"].as_i64(),
    ) {
        (Some(max), None) => assert!(max >= 1 && max < replicas, "maxUnavailable {max}"),
        (None, Some(min)) => assert!(min >= 1 && min < replicas, "minAvailable {min}"),
        other => panic!("the PDB needs exactly one integer budget, got {other:?}"),
    }
}

#[test]
fn memory_is_sized_from_the_cache() {
    // The rule written in deployment.yaml and deploy/README.md: request >= 1.5 x
    // cache.max_size, limit >= 2 x cache.max_size.
    let base = Base::load();
    let max_size = base.config.size("cache", "max_size");
    let resources = at(base.container(), &["resources"]);
    let request = k8s_bytes(str_at(resources, &["requests", "memory"]));
    let limit = k8s_bytes(str_at(resources, &["limits", "memory"]));
    assert!(
        request * 2 >= max_size * 3,
        "memory request {request} < 1.5 x cache.max_size {max_size}"
    );
    assert!(
        limit >= 2 * max_size,
        "memory limit {limit} < 2 x cache.max_size {max_size}"
    );
    assert!(request <= limit);
    str_at(resources, &["requests", "cpu"]);
}

/// `kubectl kustomize DIR`, offline: the rendered documents, or `None` (with a note)
/// where kubectl is not installed; the tests that read the same files run without it.
fn kustomize(dir: &Path) -> Option<Vec<Yaml>> {
    let out = match Command::new("kubectl").arg("kustomize").arg(dir).output() {
        Ok(out) => out,
        Err(e) => {
            eprintln!("kubectl not available ({e}): rendering not checked");
            return None;
        }
    };
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    Some(YamlLoader::load_from_str(&text).expect("rendered YAML"))
}

/// `kubectl kustomize` renders the base offline. Skipped (with a note) where kubectl is
/// not installed; the tests above read the same files without it.
#[test]
fn kustomize_renders_the_base_with_the_generated_configmap() {
    let base = Base::load();
    let Some(docs) = kustomize(&base.dir) else {
        return;
    };
    let namespace = str_at(&base.kustomization, &["namespace"]);
    let mut configmap = None;
    let mut deployment = None;
    for doc in &docs {
        assert_eq!(str_at(doc, &["metadata", "namespace"]), namespace);
        match str_at(doc, &["kind"]) {
            "ConfigMap" => configmap = Some(doc),
            "Deployment" => deployment = Some(doc),
            "Secret" => panic!("the rendered base must not carry the placeholder Secret"),
            _ => {}
        }
    }
    let configmap = configmap.expect("a ConfigMap");
    let deployment = deployment.expect("a Deployment");
    let name = str_at(configmap, &["metadata", "name"]);
    assert!(
        name.starts_with(&format!("{}-", base.configmap_name)),
        "{name}: the hash suffix is what rolls the pods on a config change"
    );
    assert_eq!(
        str_at(configmap, &["data", "config.toml"]),
        read(&base.config_path)
    );
    let volumes = list_at(deployment, &["spec", "template", "spec", "volumes"]);
    assert!(
        volumes
            .iter()
            .any(|v| v["configMap"]["name"].as_str() == Some(name)),
        "the Deployment must mount {name}"
    );
}

// ---------------------------------------------------------------- Dockerfile

/// Logical Dockerfile lines (continuations joined, comments and parser directives
/// dropped), as (INSTRUCTION, arguments).
fn dockerfile() -> Vec<(String, String)> {
    let text = read(&repo("deploy/Dockerfile"));
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (op, args) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        out.push((op.to_ascii_uppercase(), args.trim().to_string()));
        current.clear();
    }
    assert!(
        current.is_empty(),
        "the Dockerfile ends inside a continuation"
    );
    out
}

/// The instructions of the last stage (the image that ships).
fn final_stage() -> Vec<(String, String)> {
    let all = dockerfile();
    let last_from = all
        .iter()
        .rposition(|(op, _)| op == "FROM")
        .expect("a FROM");
    all[last_from..].to_vec()
}

/// An exec-form (JSON array) argument list.
fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not exec form ({e}): {args}"))
}

/// Arguments after the `--flag value` options of HEALTHCHECK or COPY.
fn without_flags(args: &str) -> &str {
    let mut rest = args.trim_start();
    while rest.starts_with("--") {
        rest = rest
            .split_once(char::is_whitespace)
            .map(|(_, r)| r.trim_start())
            .unwrap_or("");
    }
    rest
}

/// The final stage's USER, as (uid, gid).
fn dockerfile_user() -> (i64, i64) {
    let stage = final_stage();
    let user = stage
        .iter()
        .rev()
        .find(|(op, _)| op == "USER")
        .map(|(_, a)| a.as_str())
        .expect("the image sets USER");
    let (uid, gid) = user.split_once(':').unwrap_or((user, user));
    let uid: i64 = uid
        .parse()
        .unwrap_or_else(|_| panic!("USER {user}: numeric, so runAsNonRoot can verify it"));
    let gid: i64 = gid
        .parse()
        .unwrap_or_else(|_| panic!("USER {user}: numeric group"));
    (uid, gid)
}

/// The source of the COPY that puts a file at `dest` in the final stage.
fn copied_to(dest: &str) -> String {
    final_stage()
        .iter()
        .filter(|(op, _)| op == "COPY")
        .find_map(|(_, args)| {
            let parts: Vec<&str> = without_flags(args).split_whitespace().collect();
            (parts.last() == Some(&dest)).then(|| parts[0].to_string())
        })
        .unwrap_or_else(|| panic!("nothing is copied to {dest}"))
}

#[test]
fn the_image_is_built_locked_and_runs_as_non_root() {
    let all = dockerfile();
    let froms: Vec<&str> = all
        .iter()
        .filter(|(op, _)| op == "FROM")
        .map(|(_, a)| a.as_str())
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    assert!(froms[0].starts_with("rust:"), "built with the Rust image");
    let build = all
        .iter()
        .filter(|(op, _)| op == "RUN")
        .find(|(_, a)| a.contains("cargo build"))
        .map(|(_, a)| a.as_str())
        .expect("a cargo build step");
    for flag in ["--release", "--locked"] {
        assert!(
            build.split_whitespace().any(|w| w == flag),
            "cargo build {flag}"
        );
    }
    let runtime = froms.last().expect("final stage");
    assert!(
        !runtime.starts_with("rust:"),
        "the runtime is not the toolchain"
    );
    let (uid, gid) = dockerfile_user();
    assert!(uid != 0 && gid != 0, "USER {uid}:{gid} is root");
}

#[test]
fn the_image_exposes_and_checks_the_baked_configs_ports() {
    let stage = final_stage();
    let config_in_image = "/etc/exagate/config.toml";
    let source = copied_to(config_in_image);
    let config = Effective::check(&repo(&source));
    config.assert_listens_on_all_addresses(&source);

    let exposed: BTreeSet<u16> = stage
        .iter()
        .filter(|(op, _)| op == "EXPOSE")
        .flat_map(|(_, a)| a.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .map(|p| p.trim_end_matches("/tcp").parse().expect("EXPOSE port"))
        .collect();
    let listeners: BTreeSet<u16> = [
        config.addr("server", "listen").port(),
        config.addr("admin", "listen").port(),
    ]
    .into();
    assert_eq!(exposed, listeners, "EXPOSE vs the baked config's listeners");

    let single = |op: &str| {
        let found: Vec<&str> = stage
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, a)| a.as_str())
            .collect();
        assert_eq!(found.len(), 1, "one {op} in the final stage");
        found[0]
    };
    let entrypoint = exec_form(single("ENTRYPOINT"));
    assert_eq!(entrypoint, ["/usr/local/bin/exagate"]);
    assert_eq!(copied_to(&entrypoint[0]), "/out/exagate");
    assert_eq!(exec_form(single("CMD")), ["--config", config_in_image]);

    // The healthcheck is the binary itself (no curl in distroless), on the same config.
    let health = without_flags(single("HEALTHCHECK"));
    let command = exec_form(health.strip_prefix("CMD").expect("HEALTHCHECK CMD").trim());
    assert_eq!(
        command,
        [
            entrypoint[0].as_str(),
            "healthcheck",
            "--config",
            config_in_image
        ]
    );
}

#[test]
fn the_docker_context_leaves_out_target_but_not_the_sources() {
    let patterns: Vec<String> = read(&repo("deploy/Dockerfile.dockerignore"))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').to_string())
        .collect();
    assert!(patterns.iter().any(|p| p == "target"), "{patterns:?}");
    // A pattern that is a path prefix of something the build copies would break it.
    let needed = [
        "Cargo.toml".to_string(),
        "Cargo.lock".to_string(),
        "src/main.rs".to_string(),
        copied_to("/etc/exagate/config.toml"),
    ];
    for path in &needed {
        for pattern in &patterns {
            let hit = path == pattern || path.starts_with(&format!("{pattern}/"));
            assert!(!hit, "{pattern} excludes {path}");
        }
    }
}

// ---------------------------------------------------------------- systemd

/// The `[Service]` settings of the unit, each key with every value it is given.
fn unit_service() -> BTreeMap<String, Vec<String>> {
    let text = read(&repo("deploy/systemd/exagate.service"));
    let mut section = String::new();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        let (key, value) = line.split_once('=').expect("Key=Value");
        if section == "[Service]" {
            out.entry(key.trim().to_string())
                .or_default()
                .push(value.trim().to_string());
        }
    }
    out
}

fn one<'a>(unit: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    match unit.get(key).map(Vec::as_slice) {
        Some([value]) => value,
        other => panic!("{key}: expected one value, got {other:?}"),
    }
}

#[test]
fn the_systemd_unit_is_sandboxed() {
    let unit = unit_service();
    for (key, value) in [
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("CapabilityBoundingSet", ""),
        ("KillSignal", "SIGTERM"),
        ("Restart", "on-failure"),
    ] {
        assert_eq!(one(&unit, key), value, "{key}");
    }
    assert!(
        unit.get("SystemCallFilter")
            .is_some_and(|v| v.iter().any(|f| f == "@system-service")),
        "SystemCallFilter=@system-service"
    );
}

#[test]
fn the_systemd_unit_runs_reloads_and_stops_the_gateway() {
    let unit = unit_service();
    let exec: Vec<&str> = one(&unit, "ExecStart").split_whitespace().collect();
    assert_eq!(
        exec,
        [
            "/usr/local/bin/exagate",
            "--config",
            "/etc/exagate/config.toml"
        ]
    );
    let reloads = unit.get("ExecReload").expect("ExecReload");
    let hup = reloads
        .last()
        .expect("ExecReload")
        .split_whitespace()
        .collect::<Vec<_>>();
    assert_eq!(
        hup,
        ["/bin/kill", "-HUP", "$MAINPID"],
        "reload = SIGHUP, last"
    );

    let (config, key_file) = check_with_key_file(&repo("deploy/systemd/config.toml"));
    let needed =
        config.duration("server", "drain_delay") + config.duration("server", "shutdown_timeout");
    let stop = humantime::parse_duration(one(&unit, "TimeoutStopSec")).expect("TimeoutStopSec");
    assert!(
        stop > needed,
        "TimeoutStopSec {stop:?} must exceed {needed:?}"
    );

    // The config reads the key where LoadCredential puts it:
    // /run/credentials/<unit file name>/<credential id>.
    let credential = one(&unit, "LoadCredential");
    let (id, source) = credential.split_once(':').expect("ID:PATH");
    assert!(source.starts_with("/etc/exagate/"), "{source}");
    assert_eq!(
        key_file.as_deref(),
        Some(format!("/run/credentials/exagate.service/{id}").as_str()),
        "upstream.api_key_file vs LoadCredential"
    );
    assert!(
        unit.get("EnvironmentFile")
            .is_some_and(|v| v.iter().any(|f| f.starts_with('-'))),
        "the optional EnvironmentFile"
    );
    let memory = systemd_bytes(one(&unit, "MemoryMax"));
    assert!(memory >= 2 * config.size("cache", "max_size"), "MemoryMax");
}
