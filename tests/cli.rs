//! The `exagate` binary: `check`, startup errors, and the key kept out of every log line,
//! at the most verbose level, across hits, misses, errors and pass-through.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};

use bytes::Bytes;
use common::{client, free_port, send, start_sim, tempdir, wait_listening, KillOnDrop, KEY};
use exagate::sim::Fault;
use http::{Method, StatusCode};

const BIN: &str = env!("CARGO_BIN_EXE_exagate");

#[test]
fn check_prints_the_effective_config_without_the_key() {
    let dir = tempdir();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        "[cache]\nmax_size = \"1GiB\"\n[upstream]\nrate_limit = \"10/h\"\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .env("EXABASE_API_KEY", KEY)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("max_size = \"1GiB\""), "{stdout}");
    assert!(
        stdout.contains("environment variable EXABASE_API_KEY"),
        "{stdout}"
    );
    assert!(
        stdout.contains("completed jobs are kept up to 24h after creation"),
        "{stdout}"
    );
    assert!(
        stdout.contains("upstream calls are limited to 10/h (bursts of 1)"),
        "{stdout}"
    );
    assert!(stdout.contains("rate_limit = \"10/h\""), "{stdout}");
    assert!(!stdout.contains(KEY));
}

#[test]
fn the_repository_config_passes_check() {
    let out = Command::new(BIN)
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"),
        ])
        .env("EXABASE_API_KEY", KEY)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_missing_key_is_a_startup_error_naming_the_variable() {
    let dir = tempdir();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, "[upstream]\napi_key_env = \"TEAM_EXA_KEY\"\n").expect("write");
    for sub in ["check", "run"] {
        let out = Command::new(BIN)
            .arg(sub)
            .arg("--config")
            .arg(&path)
            .env_remove("TEAM_EXA_KEY")
            .output()
            .expect("run");
        assert!(!out.status.success(), "{sub} must fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("TEAM_EXA_KEY"), "{sub}: {stderr}");
    }
}

#[test]
fn a_missing_key_file_is_named() {
    let dir = tempdir();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        "[upstream]\napi_key_file = \"/nonexistent/exa-key\"\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/exa-key"));
}

#[test]
fn bad_config_values_are_named() {
    let dir = tempdir();
    for (text, named) in [
        ("[cache]\nmax_sise = \"1GiB\"\n", "max_sise"),
        ("[upstream]\ntimeout = \"soon\"\n", "timeout"),
        ("[log]\nformat = \"xml\"\n", "format"),
        ("[server]\nlisten = \"nowhere\"\n", "listen"),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).expect("write");
        let out = Command::new(BIN)
            .arg("check")
            .arg("--config")
            .arg(&path)
            .env("EXABASE_API_KEY", KEY)
            .output()
            .expect("run");
        assert!(!out.status.success(), "{text}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(named), "{text}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_never_appears_in_logs_at_trace_level() {
    let sim = start_sim(false).await;
    let dir = tempdir();
    let port = free_port();
    let config = config_file(
        dir.path(),
        port,
        &sim.url(),
        "1s",
        "level = \"trace\"\nformat = \"json\"",
    );
    let mut child = KillOnDrop(
        Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn exagate"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let c = client();
    wait_listening(port).await;

    let id = sim.add_completed(None);
    let job = format!("{base}/v2/extract/{id}");
    let mut bodies = Vec::new();
    let mut statuses = Vec::new();
    for (method, url, body) in [
        (Method::GET, job.clone(), Bytes::new()),
        (Method::GET, job.clone(), Bytes::new()),
        (
            Method::GET,
            format!("{job}/chunks?start=1&end=20"),
            Bytes::new(),
        ),
        (
            Method::POST,
            format!("{base}/v2/extract"),
            Bytes::from(r#"{"url":"https://example.com/a.pdf"}"#),
        ),
        (
            Method::GET,
            format!("{base}/v2/extract/not-a-job"),
            Bytes::new(),
        ),
    ] {
        let reply = send(&c, method, &url, &[("x-api-key", "client-sent-key")], body).await;
        statuses.push(reply.status);
        bodies.push(reply.body);
    }
    // A download, whose access line is written after its last byte.
    let download = send(
        &c,
        Method::GET,
        &format!("{job}/download"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(download.status, StatusCode::OK);
    assert_eq!(download.body.len(), 3 * 1024 * 1024);
    // A failing, then a silent, then a stopped upstream: each request for a fresh job.
    for fault in [Fault::ServerError, Fault::Silent, Fault::None] {
        if fault == Fault::None {
            sim.shutdown().await;
        }
        sim.set_fault(fault);
        let id = sim.add_completed(None);
        let url = format!("{base}/v2/extract/{id}");
        let reply = send(&c, Method::GET, &url, &[], Bytes::new()).await;
        statuses.push(reply.status);
        bodies.push(reply.body);
    }

    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::BAD_REQUEST,
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::GATEWAY_TIMEOUT,
            StatusCode::BAD_GATEWAY,
        ]
    );
    for body in &bodies {
        assert!(
            !String::from_utf8_lossy(body).contains(KEY),
            "a response body holds the key"
        );
    }

    // Stop it (SIGTERM) and read everything it logged.
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read logs");
    let status = child.wait().expect("exit");
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    // The check can fail: the logs are there, verbose, and mention the requests...
    assert!(stderr.lines().count() > 20, "too few log lines: {stderr}");
    assert!(
        stderr.contains("exagate::access"),
        "no access log: {stderr}"
    );
    assert!(stderr.contains(&id.to_string()));
    // The download's line counts its bytes and says it was sent whole.
    let download_line = stderr
        .lines()
        .find(|l| l.contains("exagate::access") && l.contains("\"route\":\"download\""))
        .expect("an access line for the download");
    assert!(
        download_line.contains("\"bytes\":3145728"),
        "{download_line}"
    );
    assert!(
        download_line.contains("\"complete\":true"),
        "{download_line}"
    );
    // ...and never the key, whatever the level.
    assert!(!stderr.contains(KEY), "the API key leaked into the logs");
}

// A full log disk must not take the gateway down (nginx keeps serving too): every write
// of its logs fails with ENOSPC, and every request is still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_serving_when_its_log_device_is_full() {
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("open /dev/full")
    };
    let sim = start_sim(false).await;
    let dir = tempdir();
    let port = free_port();
    let config = info_config(dir.path(), port, &sim.url());
    // Declared after `dir`, so dropped (killed) before the directory goes.
    let mut gateway = KillOnDrop(
        Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(full())
            .stderr(full())
            .spawn()
            .expect("spawn exagate"),
    );
    // As wait_listening, but naming an early exit (its first log line fails too).
    for attempt in 0.. {
        if let Ok(Some(status)) = gateway.0.try_wait() {
            panic!("the gateway exited at startup: {status}");
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            attempt < 100,
            "nothing listens on 127.0.0.1:{port} after 5 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let c = client();
    let id = sim.add_completed(None);
    let job = format!("http://127.0.0.1:{port}/v2/extract/{id}");
    for i in 0..40 {
        let reply = send(&c, Method::GET, &job, &[], Bytes::new()).await;
        assert_eq!(reply.status, StatusCode::OK, "request {i}");
        assert_eq!(reply.json()["id"], id.to_string(), "request {i}");
        let expected = if i == 0 { "miss" } else { "hit" };
        assert_eq!(reply.cache(), expected, "request {i}");
    }
    for i in 0..5 {
        let bad = format!("http://127.0.0.1:{port}/v2/extract/not-a-job-{i}");
        let reply = send(&c, Method::GET, &bad, &[], Bytes::new()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "bad id {i}");
        assert_eq!(reply.error_code(), "invalid_job_id", "bad id {i}");
    }
    assert_eq!(sim.calls(), 1, "one upstream call, for the miss");
    assert!(
        matches!(gateway.0.try_wait(), Ok(None)),
        "the gateway exited: {:?}",
        gateway.0.try_wait()
    );
}

/// A config for a gateway on `port` in front of `sim`, logging at `info`, with the key in
/// a file beside it.
fn info_config(dir: &std::path::Path, port: u16, sim: &str) -> std::path::PathBuf {
    config_file(dir, port, sim, "2s", "level = \"info\"")
}

/// A config for a gateway on `port` in front of `sim` with this upstream `timeout` and
/// `[log]` table, the key in a file beside it.
fn config_file(
    dir: &std::path::Path,
    port: u16,
    sim: &str,
    timeout: &str,
    log: &str,
) -> std::path::PathBuf {
    let key_file = dir.join("key");
    std::fs::write(&key_file, format!("{KEY}\n")).expect("write key");
    let config = dir.join("config.toml");
    // The admin listener on a port of its own: the default (9090) would make two of
    // these gateways running at once collide.
    let admin = free_port();
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\ndrain_delay = \"0s\"\n\
             [upstream]\nurl = \"{sim}\"\napi_key_file = \"{}\"\ntimeout = \"{timeout}\"\n\
             [admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             [log]\n{log}\n",
            key_file.display()
        ),
    )
    .expect("write config");
    config
}

// The log writer batches lines it finds queued together; a line must still reach the
// file at once when traffic stops, not wait for later lines or for shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_lines_reach_the_log_file_while_the_gateway_runs() {
    let sim = start_sim(false).await;
    let dir = tempdir();
    let port = free_port();
    let config = info_config(dir.path(), port, &sim.url());
    let log = dir.path().join("stderr.log");
    let _gateway = KillOnDrop(
        Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn exagate"),
    );
    wait_listening(port).await;
    let c = client();
    let id = sim.add_completed(None);
    let path = format!("/v2/extract/{id}");
    let reply = send(
        &c,
        Method::GET,
        &format!("http://127.0.0.1:{port}{path}"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let mut seen = String::new();
    for _ in 0..40 {
        seen = std::fs::read_to_string(&log).unwrap_or_default();
        if seen
            .lines()
            .any(|l| l.contains("exagate::access") && l.contains(&path))
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no access line for {path} within 2 s; the log holds:\n{seen}");
}

/// `exagate check` on a config of `rest` after an `[upstream]` that reads the key from a
/// file, with `env` set: whether it passed, and everything it printed.
fn check_config(dir: &std::path::Path, rest: &str, env: &[(&str, &str)]) -> (bool, String) {
    let key_file = dir.join("key");
    std::fs::write(&key_file, format!("{KEY}\n")).expect("write key");
    let config = dir.join("checked.toml");
    std::fs::write(
        &config,
        format!(
            "[upstream]\napi_key_file = \"{}\"\n{rest}",
            key_file.display()
        ),
    )
    .expect("write config");
    common::run_exagate(&["check"], &config, env)
}

/// `exagate check` on a config whose `[admin]` table is `admin`.
fn check_admin(dir: &std::path::Path, admin: &str) -> (bool, String) {
    check_config(dir, &format!("[admin]\n{admin}\n"), &[])
}

#[test]
fn check_says_what_admin_listen_off_and_commented_out_mean() {
    let dir = tempdir();
    let (ok, off) = check_admin(dir.path(), "listen = \"off\"");
    assert!(ok, "{off}");
    assert!(off.contains("admin listener off"), "{off}");
    // The effective config it prints reads back as off, not as the default.
    assert!(off.contains("listen = \"off\""), "{off}");
    let (ok, commented) = check_admin(dir.path(), "# listen = \"127.0.0.1:9090\"");
    assert!(ok, "{commented}");
    assert!(
        commented.contains("admin routes (/metrics, /healthz, /readyz, purge) on 127.0.0.1:9090"),
        "commenting out is the default, and check says so: {commented}"
    );
    let (ok, bad) = check_admin(dir.path(), "listen = \"nowhere\"");
    assert!(!ok);
    assert!(
        bad.contains("admin.listen") || bad.contains("listen"),
        "{bad}"
    );
    assert!(
        bad.contains("\"off\""),
        "the error names the way to turn it off: {bad}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_with_the_admin_off_run_side_by_side() {
    let sim = start_sim(false).await;
    let id = sim.add_completed(None);
    let c = client();
    let mut running = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..2 {
        let dir = tempdir();
        let port = free_port();
        let key_file = dir.path().join("key");
        std::fs::write(&key_file, format!("{KEY}\n")).expect("write key");
        let config = dir.path().join("config.toml");
        // No admin port given: with the listener on, both would take 127.0.0.1:9090.
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\n\
                 [upstream]\nurl = \"{}\"\napi_key_file = \"{}\"\n[admin]\nlisten = \"off\"\n",
                sim.url(),
                key_file.display()
            ),
        )
        .expect("write config");
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn exagate");
        running.push((KillOnDrop(child), port));
        dirs.push(dir);
    }
    for (gateway, port) in &mut running {
        wait_listening(*port).await;
        let reply = send(
            &c,
            Method::GET,
            &format!("http://127.0.0.1:{port}/v2/extract/{id}"),
            &[],
            Bytes::new(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(
            gateway.0.try_wait().expect("wait").is_none(),
            "both gateways keep running"
        );
    }
}

#[test]
fn check_never_shows_the_redis_password() {
    let dir = tempdir();
    let rest = format!(
        "[admin]\nlisten = \"off\"\n[shared]\nredis_url = \"redis://:hunter2-redis-pw@127.0.0.1:6399/0\"\nmax_replicas = 4\n[state]\ndir = \"{}\"\n",
        dir.path().join("state").display()
    );
    let (ok, text) = check_config(dir.path(), &rest, &[]);
    assert!(ok, "{text}");
    assert!(!text.contains("hunter2-redis-pw"), "{text}");
    assert!(text.contains("redis://***@127.0.0.1:6399/0"), "{text}");
    assert!(text.contains("1/4 of the quota"), "{text}");
    assert!(text.contains("read back at start"), "{text}");
}

#[test]
fn check_refuses_a_redis_url_from_the_environment_that_run_would_refuse() {
    let dir = tempdir();
    let rest =
        "[admin]\nlisten = \"off\"\n[shared]\nredis_url_env = \"EXAGATE_TEST_BAD_REDIS_URL\"\n";
    for url in [
        "redis://:pw-9f@127.0.0.1:notaport/0",
        "http://:pw-9f@127.0.0.1:6379/0",
    ] {
        let (ok, text) = check_config(dir.path(), rest, &[("EXAGATE_TEST_BAD_REDIS_URL", url)]);
        assert!(!ok, "{url}: {text}");
        assert!(
            text.contains("shared.redis_url") && !text.contains("pw-9f"),
            "{text}"
        );
    }
}

/// `exagate demo` shows the whole webhook loop itself: a long-poll answered `completed`
/// the moment its job completes, with no upstream poll.
#[test]
fn the_demo_shows_a_long_poll_answered_by_the_webhook() {
    use std::io::BufRead as _;
    let port = common::free_port();
    let mut child = common::KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_exagate"))
            .args(["demo", "--listen", &format!("127.0.0.1:{port}")])
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn the demo"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut seen = Vec::new();
    let answered = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with("demo long-poll: answered") => break line,
            Ok(line) => seen.push(line),
            Err(_) => panic!("no long-poll line within 30 s; printed: {seen:#?}"),
        }
    };
    assert!(answered.contains("\"completed\""), "{answered}");
    assert!(
        answered.ends_with("upstream polls of the job: 0"),
        "{answered}"
    );
    assert!(
        seen.iter().any(|l| l.contains("?wait=30s")),
        "the demo prints the long-poll to try"
    );
}
