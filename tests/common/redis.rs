//! A real `redis-server` (Debian's package; `.ci/run` installs it) on a free loopback port,
//! in a temporary directory, stopped when dropped. For the shared-tier tests.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use exagate::config::SharedConfig;
use exagate::sim::Simulator;
use exagate::{Config, RunningGateway};

/// Whether `redis-server` is installed. When it is not, the shared-tier tests say so and
/// pass without running, so `cargo test` works on a machine with only Rust; `.ci/run`
/// installs it and sets `EXAGATE_REQUIRE_REDIS=1`, under which a missing server fails the
/// test instead, so CI never skips them.
pub fn installed() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("EXAGATE_REQUIRE_REDIS").is_none(),
            "redis-server is not installed (Debian: apt-get install redis-server) and EXAGATE_REQUIRE_REDIS is set"
        );
        eprintln!("SKIPPED: redis-server is not installed (Debian: apt-get install redis-server); the shared-tier test did not run");
    }
    found
}

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// `requirepass`, when set.
    password: Option<String>,
}

impl RedisServer {
    /// Starts one, and waits until it answers.
    pub async fn start() -> RedisServer {
        RedisServer::start_with(None).await
    }

    /// Starts one on `port`.
    pub async fn start_on(port: u16) -> RedisServer {
        let mut server = RedisServer {
            port,
            child: None,
            dir: super::tempdir(),
            password: None,
        };
        server.spawn().await;
        server
    }

    /// Starts one that requires `password`.
    pub async fn start_with(password: Option<&str>) -> RedisServer {
        let dir = super::tempdir();
        let port = super::free_port();
        let mut server = RedisServer {
            port,
            child: None,
            dir,
            password: password.map(str::to_owned),
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let child = command
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (Debian's redis-server package; .ci/run installs it)");
        self.child = Some(child);
        for _ in 0..200 {
            if self.ping().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server on 127.0.0.1:{} did not answer", self.port);
    }

    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// A `[shared]` section pointing at this server.
    pub fn config(&self) -> SharedConfig {
        SharedConfig {
            redis_url: Some(self.url()),
            redis_url_env: None,
            namespace: "exagate-test".into(),
            // Not the 250 ms default: a test machine running the whole suite on two cores
            // can take longer than that to answer, and a breaker tripped by load would make
            // a replica fetch on its own, which the tests count as a wrong answer.
            timeout: Duration::from_secs(1),
            max_replicas: 2,
        }
    }

    async fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let attempt = async {
            let mut c = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut c).await
        };
        matches!(
            tokio::time::timeout(Duration::from_millis(500), attempt).await,
            Ok(Ok(_))
        )
    }

    /// A connection for looking inside.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test Redis")
    }

    /// Every key and value in the server, for searching.
    pub async fn dump(&self) -> Vec<(String, Vec<u8>)> {
        let mut c = self.conn().await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut c)
            .await
            .expect("KEYS");
        let mut out = Vec::new();
        for key in keys {
            let kind: String = redis::cmd("TYPE")
                .arg(&key)
                .query_async(&mut c)
                .await
                .expect("TYPE");
            let value: Vec<u8> = match kind.as_str() {
                "string" => redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut c)
                    .await
                    .unwrap_or_default(),
                "hash" => {
                    let fields: Vec<Vec<u8>> = redis::cmd("HGETALL")
                        .arg(&key)
                        .query_async(&mut c)
                        .await
                        .unwrap_or_default();
                    fields.concat()
                }
                _ => Vec::new(),
            };
            out.push((key, value));
        }
        out
    }

    fn pid(&self) -> Option<String> {
        self.child.as_ref().map(|c| c.id().to_string())
    }

    /// `kill -STOP`: Redis freezes, its connections stay open.
    pub fn freeze(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args(["-STOP", &pid]).status();
        }
    }

    /// `kill -CONT`.
    pub fn thaw(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args(["-CONT", &pid]).status();
        }
    }

    /// Kills it (everything in it is lost: no persistence).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.thaw();
        self.kill();
    }
}

/// A config for one replica sharing `redis`.
pub fn replica_config(redis: &RedisServer) -> Config {
    let mut config = super::test_config();
    config.shared = Some(redis.config());
    config
}

/// `n` replicas in front of `sim`, sharing `redis`, each in shared mode before it is
/// handed back.
pub async fn replicas(
    sim: &Simulator,
    redis: &RedisServer,
    n: usize,
    adjust: impl Fn(&mut Config),
) -> Vec<RunningGateway> {
    let mut out = Vec::new();
    for _ in 0..n {
        let mut config = replica_config(redis);
        adjust(&mut config);
        out.push(super::start_gateway(sim, config).await);
    }
    for gw in &out {
        wait_shared(gw, true).await;
    }
    out
}

/// Waits (up to 5 s) for a replica to be in (or out of) shared mode.
pub async fn wait_shared(gw: &RunningGateway, on: bool) {
    let shared = gw.gateway.shared.as_ref().expect("[shared] configured");
    for _ in 0..200 {
        if shared.usable() == on {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "the replica did not turn shared mode {}",
        if on { "on" } else { "off" }
    );
}

/// A real redis-server and a simulator for a `[shared]` test; `None` (the test returns,
/// saying it skipped) where redis-server is not installed.
pub async fn setup() -> Option<(RedisServer, Simulator)> {
    if !installed() {
        return None;
    }
    Some((RedisServer::start().await, super::start_sim(false).await))
}
