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
            // What the overlay's Secret provides (check reads it, as it reads the key).
            .env("EXAGATE_REDIS_URL", "redis://exagate-redis:6379/0")
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
        let config_path = generated_config(&dir, &generators[0]);
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

// ---------------------------------------------------------------- Kubernetes: shared overlay

/// The overlay whose replicas share one Redis. A sibling of the base, not inside it:
/// kustomize refuses a base directory that contains the overlay using it (a cycle).
const OVERLAY: &str = "deploy/kubernetes-overlays/shared";
/// The Secret key the overlay gives the container its Redis URL from.
const REDIS_URL_KEY: &str = "redis-url";

/// A container's port given by name or number, as a number.
fn container_port(container: &Yaml, port: &Yaml) -> i64 {
    match (port.as_i64(), port.as_str()) {
        (Some(n), _) => n,
        (None, Some(name)) => int_at(
            named(list_at(container, &["ports"]), name),
            &["containerPort"],
        ),
        _ => panic!("a port is neither a name nor a number: {port:?}"),
    }
}

/// The value after `flag` in an argument list (`--port 6379`), if the flag is there.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let at = args.iter().position(|a| a == flag)?;
    Some(
        args.get(at + 1)
            .unwrap_or_else(|| panic!("{flag} without a value in {args:?}"))
            .as_str(),
    )
}

/// A Redis memory size (`256mb`, `1gb`, `100m`; `k`/`m`/`g` are powers of 1000, `kb`/
/// `mb`/`gb` of 1024, as redis.conf reads them), in bytes.
fn redis_bytes(text: &str) -> u64 {
    let lower = text.to_ascii_lowercase();
    let split = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (num, unit) = lower.split_at(split);
    let num: u64 = num.parse().unwrap_or_else(|_| panic!("size {text:?}"));
    let mult: u64 = match unit {
        "" | "b" => 1,
        "k" => 1_000,
        "kb" => 1 << 10,
        "m" => 1_000_000,
        "mb" => 1 << 20,
        "g" => 1_000_000_000,
        "gb" => 1 << 30,
        other => panic!("unexpected unit {other:?} in {text:?}"),
    };
    num * mult
}

/// The overlay's files, read the way `kubectl kustomize` would, checked on the way in:
/// it uses the base once and its own `redis.yaml`, leaves its placeholder Secret out,
/// patches the base's Deployment, and replaces the base's generated ConfigMap by name.
struct Overlay {
    dir: PathBuf,
    kustomization: Yaml,
    /// The strategic merge patch on the base's Deployment.
    patch: Yaml,
    /// The objects of `redis.yaml`, by kind.
    redis: BTreeMap<String, Yaml>,
    /// The placeholder Secret with the key the patch reads.
    secret: Yaml,
    config_path: PathBuf,
    config: Effective,
}

impl Overlay {
    fn load(base: &Base) -> Overlay {
        let dir = repo(OVERLAY);
        let kustomization = yaml_doc(&dir.join("kustomization.yaml"));
        let resources: Vec<&str> = list_at(&kustomization, &["resources"])
            .iter()
            .map(|r| r.as_str().expect("resource path"))
            .collect();
        let base_dir = base.dir.canonicalize().expect("the base directory");
        let bases: Vec<&&str> = resources
            .iter()
            .filter(|r| {
                dir.join(r)
                    .canonicalize()
                    .is_ok_and(|path| path == base_dir)
            })
            .collect();
        assert_eq!(
            bases.len(),
            1,
            "the overlay must use the base {} once: {resources:?}",
            base.dir.display()
        );
        assert!(
            resources.contains(&"redis.yaml"),
            "the trial Redis is a resource of the overlay: {resources:?}"
        );

        let patches = list_at(&kustomization, &["patches"]);
        assert_eq!(patches.len(), 1, "one patch, on the Deployment");
        let patch_file = str_at(&patches[0], &["path"]);
        let patch = yaml_doc(&dir.join(patch_file));
        let deployment = str_at(&base.deployment, &["metadata", "name"]);
        assert_eq!(str_at(&patch, &["kind"]), "Deployment");
        assert_eq!(str_at(&patch, &["metadata", "name"]), deployment);
        let target = &patches[0]["target"];
        if !target.is_badvalue() {
            assert_eq!(str_at(target, &["kind"]), "Deployment", "patch target");
            assert_eq!(str_at(target, &["name"]), deployment, "patch target");
        }

        // Every manifest beside it is used, except the placeholder Secret.
        for path in files_under(&dir, &|p| has_ext(p, &["yaml", "yml"])) {
            let name = path.file_name().and_then(|n| n.to_str()).expect("name");
            if name == "kustomization.yaml" {
                continue;
            }
            let used = resources.contains(&name) || name == patch_file;
            if name == "secret.yaml" {
                assert!(
                    !used,
                    "{OVERLAY}/secret.yaml must stay out of the kustomization"
                );
            } else {
                assert!(used, "{OVERLAY}/{name} is neither a resource nor the patch");
            }
        }

        // The base's ConfigMap, replaced (same name: the base's Deployment mounts it).
        let generators = list_at(&kustomization, &["configMapGenerator"]);
        assert_eq!(generators.len(), 1, "one generated ConfigMap");
        assert_eq!(
            str_at(&generators[0], &["name"]),
            base.configmap_name,
            "the overlay replaces the base's ConfigMap, by its name"
        );
        assert_eq!(str_at(&generators[0], &["behavior"]), "replace");
        let config_path = generated_config(&dir, &generators[0]);
        assert!(
            config_path.starts_with(&dir),
            "the overlay's own config.toml"
        );
        let config = Effective::check(&config_path);

        let mut redis = BTreeMap::new();
        for doc in yaml_docs(&dir.join("redis.yaml")) {
            let kind = str_at(&doc, &["kind"]).to_string();
            assert!(
                redis.insert(kind.clone(), doc).is_none(),
                "two {kind} in redis.yaml"
            );
        }
        Overlay {
            secret: yaml_doc(&dir.join("secret.yaml")),
            dir,
            kustomization,
            patch,
            redis,
            config_path,
            config,
        }
    }

    fn patched_container(&self) -> &Yaml {
        named(
            list_at(&self.patch, &["spec", "template", "spec", "containers"]),
            "exagate",
        )
    }

    /// A Deployment field the patch sets, else the base's.
    fn deployment_field<'a>(&'a self, base: &'a Base, keys: &[&str]) -> &'a Yaml {
        let mut patched = &self.patch;
        for key in keys {
            patched = &patched[*key];
        }
        if patched.is_badvalue() {
            at(&base.deployment, keys)
        } else {
            patched
        }
    }

    fn redis_object(&self, kind: &str) -> &Yaml {
        self.redis
            .get(kind)
            .unwrap_or_else(|| panic!("no {kind} in {OVERLAY}/redis.yaml"))
    }

    fn redis_pod(&self) -> &Yaml {
        at(
            self.redis_object("Deployment"),
            &["spec", "template", "spec"],
        )
    }

    fn redis_container(&self) -> &Yaml {
        let containers = list_at(self.redis_pod(), &["containers"]);
        assert_eq!(containers.len(), 1, "one container in the Redis pod");
        &containers[0]
    }

    /// The Redis pod's arguments to redis-server.
    fn redis_args(&self) -> Vec<String> {
        list_at(self.redis_container(), &["args"])
            .iter()
            .map(|a| a.as_str().expect("string arg").to_string())
            .collect()
    }

    /// The port redis-server listens on: `--port`, else its default.
    fn redis_port(&self) -> i64 {
        flag_value(&self.redis_args(), "--port").map_or(6379, |p| p.parse().expect("--port"))
    }
}

#[test]
fn the_shared_overlay_uses_the_base_and_adds_only_redis() {
    let base = Base::load();
    let overlay = Overlay::load(&base);
    // Its own objects land where the base's are, and match them by namespace.
    assert_eq!(
        str_at(&overlay.kustomization, &["namespace"]),
        str_at(&base.kustomization, &["namespace"]),
        "the overlay's namespace"
    );
    let kinds: BTreeSet<&str> = overlay.redis.keys().map(String::as_str).collect();
    assert!(
        kinds.contains("Deployment") && kinds.contains("Service"),
        "redis.yaml: a Deployment and a Service, got {kinds:?}"
    );
    for (kind, doc) in &overlay.redis {
        let name = str_at(doc, &["metadata", "name"]);
        assert!(
            name.contains("redis"),
            "{kind} {name}: the trial Redis must not take a gateway object's name"
        );
    }
    // The patch adds to the base's container; it restates none of what it keeps.
    let container = overlay.patched_container();
    for key in ["image", "args", "ports", "resources", "securityContext"] {
        assert!(
            container[key].is_badvalue(),
            "the patch should not override the base's {key}"
        );
    }
}

#[test]
fn the_shared_overlays_config_is_the_bases_plus_shared() {
    let base = Base::load();
    let overlay = Overlay::load(&base);
    // The base's manifests (ports, probes, preStop, grace period, memory, Service,
    // Secret keys) are used as they are, and the tests above check them against the
    // base's config: the overlay's must keep those values for that to hold for it.
    for (section, key) in [
        ("server", "listen"),
        ("server", "public_url"),
        ("server", "drain_delay"),
        ("server", "shutdown_timeout"),
        ("cache", "max_size"),
        ("admin", "listen"),
        ("admin", "token_env"),
        ("upstream", "url"),
        ("upstream", "api_key_env"),
        ("log", "format"),
    ] {
        assert_eq!(
            overlay.config.str(section, key),
            base.config.str(section, key),
            "{section}.{key}: the overlay's config must agree with the base's manifests"
        );
    }
    overlay
        .config
        .assert_listens_on_all_addresses(&overlay.config_path.display().to_string());
    assert!(
        base.config.get("shared", "max_replicas").is_none(),
        "the base runs each replica on its own"
    );
    // One bucket for every replica: the account's whole quota, set.
    overlay.config.str("upstream", "rate_limit");
}

#[test]
fn the_shared_overlay_reads_the_redis_url_from_the_secret() {
    let base = Base::load();
    let overlay = Overlay::load(&base);
    // A URL may hold a password: never in the ConfigMap.
    assert!(
        overlay.config.get("shared", "redis_url").is_none(),
        "shared.redis_url in a ConfigMap: use redis_url_env"
    );
    let var = overlay.config.str("shared", "redis_url_env");
    let env = list_at(overlay.patched_container(), &["env"]);
    let reference = at(named(env, var), &["valueFrom", "secretKeyRef"]);
    let secret_name = str_at(&base.secret, &["metadata", "name"]);
    assert_eq!(str_at(reference, &["name"]), secret_name, "{var}");
    assert_eq!(str_at(reference, &["key"]), REDIS_URL_KEY, "{var}");
    assert!(
        !reference["optional"].as_bool().unwrap_or(false),
        "{var}: a gateway with [shared] and no URL does not start; say so at the pod"
    );
    // The base's variables come from the base (merged by name), not restated.
    for kept in [
        base.config.str("upstream", "api_key_env"),
        base.config.str("admin", "token_env"),
    ] {
        assert!(
            env.iter().all(|e| e["name"].as_str() != Some(kept)),
            "the patch restates {kept}"
        );
    }

    // The overlay's placeholder Secret: the base's keys, still placeholders, and the URL.
    let secret = &overlay.secret;
    assert_eq!(str_at(secret, &["metadata", "name"]), secret_name);
    assert_eq!(
        str_at(secret, &["metadata", "namespace"]),
        str_at(&overlay.kustomization, &["namespace"])
    );
    let keys = string_map(secret, &["stringData"]);
    for (key, value) in string_map(&base.secret, &["stringData"]) {
        assert_eq!(
            keys.get(&key),
            Some(&value),
            "{key} in {OVERLAY}/secret.yaml"
        );
    }
    assert!(keys.contains_key(REDIS_URL_KEY), "{OVERLAY}/secret.yaml");
}

#[test]
fn max_replicas_counts_every_pod_a_rollout_runs() {
    // While Redis is away each replica spends rate_limit / max_replicas: every pod that
    // can run at once must be counted, the rolling update's surge included.
    let base = Base::load();
    let overlay = Overlay::load(&base);
    let replicas = overlay
        .deployment_field(&base, &["spec", "replicas"])
        .as_i64()
        .expect("integer replicas");
    let surge = overlay.deployment_field(&base, &["spec", "strategy", "rollingUpdate", "maxSurge"]);
    let surge = match (surge.as_i64(), surge.as_str()) {
        (Some(n), _) => n,
        // A percentage of replicas, rounded up, as the Deployment controller does.
        (None, Some(pct)) => {
            let pct: i64 = pct
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("maxSurge {pct:?}"));
            (replicas * pct + 99) / 100
        }
        _ => panic!("maxSurge is neither a number nor a percentage: {surge:?}"),
    };
    let max = overlay.config.int("shared", "max_replicas");
    assert!(
        max >= replicas + surge,
        "shared.max_replicas {max} < replicas {replicas} + maxSurge {surge}"
    );
}

#[test]
fn the_trial_redis_is_where_the_secret_example_points() {
    let base = Base::load();
    let overlay = Overlay::load(&base);
    let deployment = overlay.redis_object("Deployment");
    let service = overlay.redis_object("Service");
    let name = str_at(service, &["metadata", "name"]);
    assert_eq!(str_at(deployment, &["metadata", "name"]), name);

    // The Service selects the Redis pod, and the gateway's selectors do not.
    let labels = string_map(deployment, &["spec", "template", "metadata", "labels"]);
    assert_subset(
        &string_map(service, &["spec", "selector"]),
        &labels,
        "Redis Service selector",
    );
    assert_subset(
        &string_map(deployment, &["spec", "selector", "matchLabels"]),
        &labels,
        "Redis Deployment selector",
    );
    for (what, selector) in [
        (
            "the gateway's Service",
            string_map(&base.service, &["spec", "selector"]),
        ),
        (
            "the gateway's PDB",
            string_map(&base.pdb, &["spec", "selector", "matchLabels"]),
        ),
        (
            "the gateway's Deployment",
            string_map(&base.deployment, &["spec", "selector", "matchLabels"]),
        ),
    ] {
        assert!(
            !selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
            "{what} selects the Redis pod ({selector:?})"
        );
    }

    // The Service's one port reaches redis-server's.
    let container = overlay.redis_container();
    let port = overlay.redis_port();
    let ports = list_at(service, &["spec", "ports"]);
    assert_eq!(ports.len(), 1, "one Redis port");
    assert_eq!(
        container_port(container, at(&ports[0], &["targetPort"])),
        port
    );
    let service_port = int_at(&ports[0], &["port"]);
    assert_eq!(
        container_port(
            container,
            at(container, &["readinessProbe", "tcpSocket", "port"])
        ),
        port,
        "the readiness probe connects to Redis's port"
    );

    // A cache: nothing on disk, bounded memory, evicting what has a TTL.
    let image = str_at(container, &["image"]);
    assert!(image.starts_with("redis:7"), "image {image}");
    let args = overlay.redis_args();
    assert_eq!(flag_value(&args, "--save"), Some(""), "no RDB snapshots");
    assert_eq!(flag_value(&args, "--appendonly"), Some("no"), "no AOF");
    assert_eq!(
        flag_value(&args, "--maxmemory-policy"),
        Some("volatile-lru")
    );
    let maxmemory = redis_bytes(flag_value(&args, "--maxmemory").expect("--maxmemory"));
    let resources = at(container, &["resources"]);
    let limit = k8s_bytes(str_at(resources, &["limits", "memory"]));
    let request = k8s_bytes(str_at(resources, &["requests", "memory"]));
    assert!(
        request > maxmemory && limit >= request,
        "memory vs --maxmemory"
    );
    let pod_sc = at(overlay.redis_pod(), &["securityContext"]);
    assert_eq!(pod_sc["runAsNonRoot"].as_bool(), Some(true));
    assert!(
        pod_sc["runAsUser"].as_i64().is_some_and(|u| u != 0),
        "a numeric non-root user"
    );
    let sc = at(container, &["securityContext"]);
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));

    // Only the gateway's pods may connect, where a NetworkPolicy is given.
    if let Some(policy) = overlay.redis.get("NetworkPolicy") {
        assert_subset(
            &string_map(policy, &["spec", "podSelector", "matchLabels"]),
            &labels,
            "NetworkPolicy podSelector",
        );
        let rules = list_at(policy, &["spec", "ingress"]);
        let from = list_at(&rules[0], &["from"]);
        assert_subset(
            &string_map(&from[0], &["podSelector", "matchLabels"]),
            &base.pod_labels(),
            "NetworkPolicy ingress from",
        );
        let allowed = list_at(&rules[0], &["ports"]);
        assert_eq!(container_port(container, at(&allowed[0], &["port"])), port);
    }

    // The URL the placeholder Secret and the README give is this Service's.
    let url = string_map(&overlay.secret, &["stringData"])
        .remove(REDIS_URL_KEY)
        .expect("redis-url");
    let uri: http::Uri = url.parse().unwrap_or_else(|e| panic!("{url}: {e}"));
    assert_eq!(uri.scheme_str(), Some("redis"), "{url}");
    let namespace = str_at(&overlay.kustomization, &["namespace"]);
    let hosts = [
        name.to_string(),
        format!("{name}.{namespace}"),
        format!("{name}.{namespace}.svc"),
        format!("{name}.{namespace}.svc.cluster.local"),
    ];
    assert!(
        uri.host().is_some_and(|h| hosts.iter().any(|n| n == h)),
        "{url}: the host must be the Service {name}"
    );
    assert_eq!(
        i64::from(uri.port_u16().unwrap_or(6379)),
        service_port,
        "{url}"
    );
    let command = format!("--from-literal={REDIS_URL_KEY}={url}");
    for doc in [repo("deploy/README.md"), overlay.dir.join("secret.yaml")] {
        assert!(
            read(&doc).contains(&command),
            "{} must show `{command}`",
            doc.display()
        );
    }
}

/// `kubectl kustomize` renders the overlay: one ConfigMap, the overlay's config, mounted;
/// the container's variables merged (the base's and the Redis URL); the Redis objects in
/// the namespace; no Secret. Skipped where kubectl is not installed.
#[test]
fn kustomize_renders_the_shared_overlay() {
    let base = Base::load();
    let overlay = Overlay::load(&base);
    let Some(docs) = kustomize(&overlay.dir) else {
        return;
    };
    let namespace = str_at(&overlay.kustomization, &["namespace"]);
    let mut configmaps = Vec::new();
    let mut objects = BTreeSet::new();
    for doc in &docs {
        assert_eq!(str_at(doc, &["metadata", "namespace"]), namespace);
        let kind = str_at(doc, &["kind"]);
        assert_ne!(
            kind, "Secret",
            "the rendered overlay must not carry a Secret"
        );
        if kind == "ConfigMap" {
            configmaps.push(doc);
        }
        objects.insert((
            kind.to_string(),
            str_at(doc, &["metadata", "name"]).to_string(),
        ));
    }
    assert_eq!(
        configmaps.len(),
        1,
        "the overlay's ConfigMap replaces the base's"
    );
    let configmap = str_at(configmaps[0], &["metadata", "name"]);
    assert!(configmap.starts_with(&format!("{}-", base.configmap_name)));
    assert_eq!(
        str_at(configmaps[0], &["data", "config.toml"]),
        read(&overlay.config_path)
    );
    for (kind, doc) in &overlay.redis {
        let name = str_at(doc, &["metadata", "name"]).to_string();
        assert!(
            objects.contains(&(kind.clone(), name.clone())),
            "{kind} {name}"
        );
    }
    let deployment_name = str_at(&base.deployment, &["metadata", "name"]);
    let deployment = docs
        .iter()
        .find(|d| {
            str_at(d, &["kind"]) == "Deployment"
                && str_at(d, &["metadata", "name"]) == deployment_name
        })
        .expect("the gateway's Deployment");
    let pod = at(deployment, &["spec", "template", "spec"]);
    assert!(
        list_at(pod, &["volumes"])
            .iter()
            .any(|v| v["configMap"]["name"].as_str() == Some(configmap)),
        "the Deployment must mount {configmap}"
    );
    let env = list_at(named(list_at(pod, &["containers"]), "exagate"), &["env"]);
    for var in [
        overlay.config.str("upstream", "api_key_env"),
        overlay.config.str("admin", "token_env"),
        overlay.config.str("shared", "redis_url_env"),
    ] {
        at(named(env, var), &["valueFrom", "secretKeyRef"]);
    }
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

// ---------------------------------------------------------------- Compose

/// `deploy/compose.yaml`, one document.
fn compose() -> Yaml {
    yaml_doc(&repo(COMPOSE))
}

/// A path in the Compose file, which is relative to the file's directory.
fn compose_path(rel: &str) -> PathBuf {
    let dir = repo(COMPOSE).parent().expect("deploy/").to_path_buf();
    dir.join(rel)
        .canonicalize()
        .unwrap_or_else(|e| panic!("{COMPOSE} names {rel}, which is not there: {e}"))
}

fn service<'a>(compose: &'a Yaml, name: &str) -> &'a Yaml {
    at(compose, &["services", name])
}

/// The gateway replicas: the services named `exagate-N`, sorted.
fn compose_replicas(compose: &Yaml) -> Vec<String> {
    let services = at(compose, &["services"]).as_hash().expect("services");
    let mut names: Vec<String> = services
        .keys()
        .filter_map(|k| k.as_str())
        .filter(|k| {
            k.strip_prefix("exagate-")
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

/// A service's command (or another list of strings under `key`).
fn string_list(svc: &Yaml, key: &str) -> Vec<String> {
    list_at(svc, &[key])
        .iter()
        .map(|a| {
            a.as_str()
                .unwrap_or_else(|| panic!("`{key}`: quote every item as a string: {a:?}"))
                .to_string()
        })
        .collect()
}

/// A service's environment, in either the mapping or the `NAME=value` list form; a
/// name with no value (passed on from the shell) maps to `None`.
fn compose_env(svc: &Yaml) -> BTreeMap<String, Option<String>> {
    let env = &svc["environment"];
    if let Some(hash) = env.as_hash() {
        return hash
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Yaml::Null => None,
                    Yaml::String(s) => Some(s.clone()),
                    other => panic!("environment value {other:?}: quote it as a string"),
                };
                (k.as_str().expect("variable name").to_string(), value)
            })
            .collect();
    }
    env.as_vec()
        .map(|items| {
            items
                .iter()
                .map(|item| {
                    let item = item.as_str().expect("NAME=value");
                    match item.split_once('=') {
                        Some((k, v)) => (k.to_string(), Some(v.to_string())),
                        None => (item.to_string(), None),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A service's bind mounts as (source on this machine, target, read-only), from the
/// short `SRC:DST[:ro]` or the long `{type: bind, source, target, read_only}` syntax.
fn bind_mounts(svc: &Yaml) -> Vec<(PathBuf, String, bool)> {
    let Some(volumes) = svc["volumes"].as_vec() else {
        return Vec::new();
    };
    volumes
        .iter()
        .filter_map(|v| {
            if let Some(short) = v.as_str() {
                let parts: Vec<&str> = short.split(':').collect();
                let (src, dst, mode) = match parts.as_slice() {
                    [src, dst] => (*src, *dst, ""),
                    [src, dst, mode] => (*src, *dst, *mode),
                    _ => panic!("volume {short:?}"),
                };
                // A named volume has no path.
                let is_path = src.starts_with('.') || src.starts_with('/');
                is_path.then(|| {
                    (
                        compose_path(src),
                        dst.to_string(),
                        mode.split(',').any(|m| m == "ro"),
                    )
                })
            } else {
                (v["type"].as_str() == Some("bind")).then(|| {
                    (
                        compose_path(str_at(v, &["source"])),
                        str_at(v, &["target"]).to_string(),
                        v["read_only"].as_bool().unwrap_or(false),
                    )
                })
            }
        })
        .collect()
}

/// A published port (`[IP:]HOST:CONTAINER`, quoted).
#[derive(Debug)]
struct Published {
    host_ip: Option<String>,
    host: u16,
    container: u16,
}

fn published(svc: &Yaml) -> Vec<Published> {
    let Some(ports) = svc["ports"].as_vec() else {
        return Vec::new();
    };
    ports
        .iter()
        .map(|p| {
            let text = p
                .as_str()
                .unwrap_or_else(|| panic!("port {p:?}: quote it (YAML reads 1:2 as a number)"));
            let text = text.trim_end_matches("/tcp");
            let parts: Vec<&str> = text.split(':').collect();
            let port = |s: &str| s.parse::<u16>().unwrap_or_else(|_| panic!("port {text:?}"));
            match parts.as_slice() {
                [ip, host, container] => Published {
                    host_ip: Some(ip.to_string()),
                    host: port(host),
                    container: port(container),
                },
                [host, container] => Published {
                    host_ip: None,
                    host: port(host),
                    container: port(container),
                },
                _ => panic!("port {text:?}: publish HOST:CONTAINER explicitly"),
            }
        })
        .collect()
}

/// The services a service waits for, in the list or the mapping form.
fn depends_on(svc: &Yaml) -> BTreeSet<String> {
    let deps = &svc["depends_on"];
    if let Some(hash) = deps.as_hash() {
        hash.keys()
            .map(|k| k.as_str().expect("service name").to_string())
            .collect()
    } else {
        deps.as_vec()
            .map(|v| {
                v.iter()
                    .map(|d| d.as_str().expect("service name").to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A Compose or nginx size (`512m`, `100m`, `1g`; powers of 1024), in bytes.
fn binary_bytes(text: &str) -> u64 {
    let lower = text.to_ascii_lowercase();
    let split = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (num, unit) = lower.split_at(split);
    let num: u64 = num.parse().unwrap_or_else(|_| panic!("size {text:?}"));
    let mult: u64 = match unit.trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        other => panic!("unexpected unit {other:?} in {text:?}"),
    };
    num * mult
}

/// One nginx directive: `name args;` or `name args { block }`.
#[derive(Debug)]
struct Directive {
    name: String,
    args: Vec<String>,
    block: Vec<Directive>,
}

#[derive(Debug)]
enum NginxToken {
    Word(String),
    Open,
    Close,
    End,
}

/// An nginx config file as its tree of directives (comments dropped, quotes honoured).
fn nginx_conf(path: &Path) -> Vec<Directive> {
    let text = read(path);
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '#' => while chars.next_if(|&n| n != '\n').is_some() {},
            '{' => tokens.push(NginxToken::Open),
            '}' => tokens.push(NginxToken::Close),
            ';' => tokens.push(NginxToken::End),
            '"' | '\'' => {
                let mut word = String::new();
                loop {
                    match chars.next() {
                        Some(q) if q == c => break,
                        Some('\\') => word.extend(chars.next()),
                        Some(ch) => word.push(ch),
                        None => panic!("{}: unterminated quote", path.display()),
                    }
                }
                tokens.push(NginxToken::Word(word));
            }
            c if c.is_whitespace() => {}
            c => {
                let mut word = String::from(c);
                while let Some(ch) = chars.next_if(|n| !n.is_whitespace() && !"{};".contains(*n)) {
                    word.push(ch);
                }
                tokens.push(NginxToken::Word(word));
            }
        }
    }
    fn parse(
        tokens: &mut std::vec::IntoIter<NginxToken>,
        path: &Path,
        nested: bool,
    ) -> Vec<Directive> {
        let mut out = Vec::new();
        loop {
            let name = match tokens.next() {
                Some(NginxToken::Word(w)) => w,
                Some(NginxToken::Close) if nested => return out,
                None if !nested => return out,
                other => panic!("{}: unexpected {other:?}", path.display()),
            };
            let mut args = Vec::new();
            loop {
                match tokens.next() {
                    Some(NginxToken::Word(w)) => args.push(w),
                    Some(NginxToken::End) => {
                        out.push(Directive {
                            name,
                            args,
                            block: Vec::new(),
                        });
                        break;
                    }
                    Some(NginxToken::Open) => {
                        let block = parse(tokens, path, true);
                        out.push(Directive { name, args, block });
                        break;
                    }
                    _ => panic!(
                        "{}: `{name}` ends with neither ; nor a block",
                        path.display()
                    ),
                }
            }
        }
    }
    parse(&mut tokens.into_iter(), path, false)
}

/// The directives named `name` in a block.
fn directives<'a>(block: &'a [Directive], name: &str) -> Vec<&'a Directive> {
    block.iter().filter(|d| d.name == name).collect()
}

/// The one directive named `name` in a block.
fn directive<'a>(block: &'a [Directive], name: &str) -> &'a Directive {
    match directives(block, name).as_slice() {
        [one] => one,
        other => panic!("expected one `{name}`, found {}", other.len()),
    }
}

/// The nginx config a service mounts under /etc/nginx.
fn mounted_nginx_conf(compose: &Yaml, name: &str) -> Vec<Directive> {
    let svc = service(compose, name);
    assert!(
        str_at(svc, &["image"]).starts_with("nginx:"),
        "{name}: the nginx image"
    );
    let mounts = bind_mounts(svc);
    let (source, _, read_only) = mounts
        .iter()
        .find(|(_, target, _)| target.starts_with("/etc/nginx/"))
        .unwrap_or_else(|| panic!("{name} mounts no config under /etc/nginx"));
    assert!(read_only, "{name}: mount its config read-only");
    nginx_conf(source)
}

/// The config both replicas mount where the image reads it, checked by `exagate check`.
fn compose_config(compose: &Yaml) -> (PathBuf, Effective) {
    let in_image = exec_form(
        &final_stage()
            .iter()
            .rev()
            .find(|(op, _)| op == "CMD")
            .expect("CMD")
            .1,
    )[1]
    .clone();
    let mut sources = BTreeSet::new();
    for name in compose_replicas(compose) {
        let mounts = bind_mounts(service(compose, &name));
        let (source, _, read_only) = mounts
            .iter()
            .find(|(_, target, _)| *target == in_image)
            .unwrap_or_else(|| panic!("{name}: no config at {in_image} (CMD, HEALTHCHECK)"));
        assert!(read_only, "{name}: mount the config read-only");
        sources.insert(source.clone());
    }
    assert_eq!(
        sources.len(),
        1,
        "the replicas must share one config: {sources:?}"
    );
    let source = sources.pop_first().expect("a config");
    let config = Effective::check(&source);
    (source, config)
}

#[test]
fn compose_runs_the_sim_redis_two_replicas_and_a_balancer() {
    let compose = compose();
    for name in ["sim", "redis", "exagate-1", "exagate-2", "lb"] {
        assert!(
            at(&compose, &["services", name]).as_hash().is_some(),
            "{COMPOSE}: service {name}"
        );
    }
    let replicas = compose_replicas(&compose);
    assert!(replicas.len() >= 2, "two replicas at least: {replicas:?}");

    // The simulator and the replicas are the gateway's image, built from the repository
    // with deploy/Dockerfile, under one name.
    let mut images = BTreeSet::new();
    for name in replicas.iter().map(String::as_str).chain(["sim"]) {
        let svc = service(&compose, name);
        let context = compose_path(str_at(svc, &["build", "context"]));
        assert_eq!(
            context,
            repo("").canonicalize().expect("root"),
            "{name}: build context"
        );
        let dockerfile = context.join(str_at(svc, &["build", "dockerfile"]));
        assert_eq!(
            dockerfile.canonicalize().expect("the Dockerfile"),
            repo("deploy/Dockerfile")
                .canonicalize()
                .expect("deploy/Dockerfile"),
            "{name}: dockerfile"
        );
        images.insert(str_at(svc, &["image"]).to_string());
    }
    assert_eq!(
        images.len(),
        1,
        "one image for the simulator and the replicas: {images:?}"
    );
    assert!(str_at(service(&compose, "redis"), &["image"]).starts_with("redis:"));

    // The simulator's image runs a health check against a gateway's admin port, which
    // the simulator does not have.
    assert_eq!(
        service(&compose, "sim")["healthcheck"]["disable"].as_bool(),
        Some(true),
        "sim: healthcheck disabled"
    );
    for name in &replicas {
        let deps = depends_on(service(&compose, name));
        assert!(deps.contains("redis"), "{name} waits for redis");
        assert!(
            deps.iter().any(|d| d.starts_with("sim")),
            "{name} waits for the simulator"
        );
    }
    let lb_deps = depends_on(service(&compose, "lb"));
    for name in &replicas {
        assert!(
            lb_deps.contains(name),
            "lb waits for {name}: nginx resolves it at start"
        );
    }
}

#[test]
fn compose_replicas_share_one_config_naming_the_compose_services() {
    let compose = compose();
    let (source, config) = compose_config(&compose);
    config.assert_listens_on_all_addresses(&source.display().to_string());
    let replicas = compose_replicas(&compose);

    // The key is the one the simulator accepts.
    let sim = string_list(service(&compose, "sim"), "command");
    assert_eq!(
        sim.first().map(String::as_str),
        Some("sim"),
        "sim runs `exagate sim`"
    );
    let sim_key = flag_value(&sim, "--key").expect("--key");
    let key_var = config.str("upstream", "api_key_env");
    for name in &replicas {
        let env = compose_env(service(&compose, name));
        assert_eq!(
            env.get(key_var).cloned().flatten().as_deref(),
            Some(sim_key),
            "{name}: ${key_var} must be the simulator's key"
        );
    }

    // upstream.url is the simulator's service name and a port it is reached at: its own
    // when it listens on every address, else the one a forwarder in its network
    // namespace listens on (`exagate sim` takes loopback addresses only).
    let upstream: http::Uri = config.str("upstream", "url").parse().expect("upstream.url");
    assert_eq!(upstream.scheme_str(), Some("http"));
    assert_eq!(
        upstream.host(),
        Some("sim"),
        "upstream.url names the service sim"
    );
    let port = upstream.port_u16().unwrap_or(80);
    let listen: SocketAddr = flag_value(&sim, "--listen")
        .expect("--listen")
        .parse()
        .expect("sim --listen");
    if listen.ip().is_unspecified() {
        assert_eq!(listen.port(), port, "upstream.url port vs sim --listen");
    } else {
        let services = at(&compose, &["services"]).as_hash().expect("services");
        let forwarder = services
            .iter()
            .find(|(_, svc)| svc["network_mode"].as_str() == Some("service:sim"))
            .map(|(name, _)| name.as_str().expect("name"))
            .expect("sim listens on loopback: a forwarder with network_mode service:sim");
        let conf = mounted_nginx_conf(&compose, forwarder);
        let servers = directives(&directive(&conf, "stream").block, "server");
        let to_sim = servers
            .iter()
            .find(|s| directive(&s.block, "listen").args[0] == port.to_string())
            .unwrap_or_else(|| panic!("{forwarder} does not listen on {port}"));
        assert_eq!(
            directive(&to_sim.block, "proxy_pass").args[0],
            listen.to_string(),
            "{forwarder} forwards to sim --listen"
        );
        assert!(depends_on(service(&compose, forwarder)).contains("sim"));
    }

    // [shared]: the redis service, at its port; max_replicas counts the replicas.
    let url = match config.get("shared", "redis_url").and_then(|v| v.as_str()) {
        Some(url) => url.to_string(),
        None => {
            let var = config.str("shared", "redis_url_env");
            let urls: BTreeSet<String> = replicas
                .iter()
                .map(|name| {
                    compose_env(service(&compose, name))
                        .get(var)
                        .cloned()
                        .flatten()
                        .unwrap_or_else(|| panic!("{name} has no ${var}"))
                })
                .collect();
            assert_eq!(urls.len(), 1, "one Redis for every replica: {urls:?}");
            urls.into_iter().next().expect("a URL")
        }
    };
    let redis: http::Uri = url.parse().unwrap_or_else(|e| panic!("{url}: {e}"));
    assert_eq!(redis.scheme_str(), Some("redis"), "{url}");
    assert_eq!(redis.host(), Some("redis"), "{url}: the service redis");
    let command = string_list(service(&compose, "redis"), "command");
    let redis_port = flag_value(&command, "--port").map_or(6379, |p| p.parse().expect("--port"));
    assert_eq!(redis.port_u16().unwrap_or(6379), redis_port, "{url}");
    assert_eq!(flag_value(&command, "--save"), Some(""), "no RDB snapshots");
    assert_eq!(flag_value(&command, "--appendonly"), Some("no"), "no AOF");
    let max = config.int("shared", "max_replicas");
    assert!(
        max >= i64::try_from(replicas.len()).expect("count"),
        "shared.max_replicas {max} < {} replicas",
        replicas.len()
    );
    config.str("upstream", "rate_limit");
}

/// The simulator command the Compose file runs is one this binary accepts (its address,
/// with port 0): it prints its URL, then is stopped.
#[test]
fn the_compose_simulator_command_runs() {
    let compose = compose();
    let mut args = string_list(service(&compose, "sim"), "command");
    let at_listen = args.iter().position(|a| a == "--listen").expect("--listen") + 1;
    let listen: SocketAddr = args[at_listen].parse().expect("sim --listen");
    args[at_listen] = SocketAddr::new(listen.ip(), 0).to_string();
    let mut child = Command::new(BIN)
        .args(&args)
        .env_remove("EXAGATE_CONFIG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start exagate sim");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
    let _ = child.kill();
    let out = child.wait_with_output().expect("wait for exagate sim");
    assert!(
        line.starts_with("http://"),
        "`exagate {}` did not start: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_compose_balancer_spreads_over_the_replicas_at_public_url() {
    let compose = compose();
    let (_, config) = compose_config(&compose);
    let replicas = compose_replicas(&compose);
    let conf = mounted_nginx_conf(&compose, "lb");

    // The upstream block lists every replica, by service name, at server.listen's port.
    let http_port = config.addr("server", "listen").port();
    let upstreams = directives(&conf, "upstream");
    assert_eq!(upstreams.len(), 1, "one upstream block");
    let upstream = upstreams[0];
    let listed: BTreeSet<String> = directives(&upstream.block, "server")
        .iter()
        .map(|s| s.args[0].clone())
        .collect();
    let expected: BTreeSet<String> = replicas
        .iter()
        .map(|name| format!("{name}:{http_port}"))
        .collect();
    assert_eq!(
        listed, expected,
        "nginx upstream vs the replicas and server.listen"
    );
    assert!(
        directives(&upstream.block, "hash").is_empty()
            && directives(&upstream.block, "ip_hash").is_empty()
            && directives(&upstream.block, "least_conn").is_empty(),
        "round robin: no balancing method"
    );

    // The server proxies everything to it.
    let server = directive(&conf, "server");
    let listen: u16 = directive(&server.block, "listen").args[0]
        .parse()
        .expect("listen PORT");
    let location = directives(&server.block, "location")
        .into_iter()
        .find(|l| l.args == ["/"])
        .expect("location /");
    assert_eq!(
        directive(&location.block, "proxy_pass").args[0],
        format!("http://{}", upstream.args[0])
    );
    // nginx lets through every upload the gateway itself accepts.
    let body = binary_bytes(&directive(&server.block, "client_max_body_size").args[0]);
    assert!(
        body >= config.size("server", "max_body"),
        "client_max_body_size"
    );

    // public_url is the balancer's published address: what apps (and followed links)
    // reach.
    let ports = published(service(&compose, "lb"));
    assert_eq!(ports.len(), 1, "lb publishes one port: {ports:?}");
    assert_eq!(
        ports[0].container, listen,
        "lb's published port vs nginx listen"
    );
    let ip = ports[0]
        .host_ip
        .as_deref()
        .expect("publish lb on an explicit address");
    let public: http::Uri = config
        .str("server", "public_url")
        .parse()
        .expect("public_url");
    assert_eq!(public.scheme_str(), Some("http"));
    assert_eq!(
        public.host(),
        Some(ip),
        "public_url host vs lb's published address"
    );
    assert_eq!(
        public.port_u16().unwrap_or(80),
        ports[0].host,
        "public_url port"
    );
}

#[test]
fn compose_replicas_publish_only_their_admin_ports_on_loopback() {
    let compose = compose();
    let (_, config) = compose_config(&compose);
    let admin = config.addr("admin", "listen").port();
    let mut host_ports = BTreeSet::new();
    let needed =
        config.duration("server", "drain_delay") + config.duration("server", "shutdown_timeout");
    for name in compose_replicas(&compose) {
        let svc = service(&compose, &name);
        for port in published(svc) {
            assert_eq!(
                port.container, admin,
                "{name}: only the admin port is published; apps go through lb"
            );
            let ip: std::net::IpAddr = port
                .host_ip
                .as_deref()
                .unwrap_or_else(|| panic!("{name}: publish the admin port on 127.0.0.1"))
                .parse()
                .expect("an IP");
            assert!(
                ip.is_loopback(),
                "{name}: the admin port (purge) on loopback only"
            );
            assert!(
                host_ports.insert(port.host),
                "{name}: port {} taken twice",
                port.host
            );
        }
        // docker compose stop waits this long before SIGKILL (10s by default).
        let grace = humantime::parse_duration(str_at(svc, &["stop_grace_period"]))
            .expect("stop_grace_period");
        assert!(
            grace > needed,
            "{name}: stop_grace_period {grace:?} <= {needed:?}"
        );
        if let Some(limit) = svc["mem_limit"].as_str() {
            assert!(
                binary_bytes(limit) >= 2 * config.size("cache", "max_size"),
                "{name}: mem_limit vs cache.max_size"
            );
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

#[test]
fn the_systemd_state_directory_is_the_configs_state_dir() {
    // Under ProtectSystem=strict the StateDirectory is the one path the service may
    // write; with DynamicUser systemd creates it (/var/lib/NAME) for the throwaway user.
    let unit = unit_service();
    let (config, _) = check_with_key_file(&repo("deploy/systemd/config.toml"));
    assert_eq!(one(&unit, "DynamicUser"), "yes");
    assert_eq!(one(&unit, "ProtectSystem"), "strict");
    let name = one(&unit, "StateDirectory");
    assert!(
        !name.is_empty() && !name.starts_with('/') && !name.contains(char::is_whitespace),
        "StateDirectory={name}: one name, relative to /var/lib"
    );
    assert_eq!(
        config.str("state", "dir"),
        format!("/var/lib/{name}"),
        "state.dir vs StateDirectory="
    );
    // The snapshot holds the account's job bodies.
    let mode = u32::from_str_radix(one(&unit, "StateDirectoryMode"), 8).expect("octal mode");
    assert_eq!(
        mode & 0o077,
        0,
        "StateDirectoryMode={mode:o}: the service's alone"
    );
}

/// The file a kustomization's ConfigMap generator makes the ConfigMap of: it holds one
/// file, under the key `config.toml` (which the container's `--config` names).
fn generated_config(dir: &Path, generator: &Yaml) -> std::path::PathBuf {
    let files = list_at(generator, &["files"]);
    assert_eq!(files.len(), 1, "the ConfigMap holds config.toml only");
    let entry = files[0].as_str().expect("file entry");
    // `key=path` or just `path` (the key is then the file name).
    let (key, file) = entry.split_once('=').unwrap_or((entry, entry));
    assert_eq!(
        Path::new(key).file_name().and_then(|n| n.to_str()),
        Some("config.toml"),
        "the ConfigMap key must be config.toml, which --config names"
    );
    dir.join(file)
}
