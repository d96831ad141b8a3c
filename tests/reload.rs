//! Live reload: parse, validate, swap. TTLs, keys and clients change without a restart;
//! a bad file keeps the old config; requests in flight are all answered.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{
    client, free_port, job_path, send, start_sim, tempdir, wait_listening, KillOnDrop, KEY,
};
use exagate::secret::ApiKey;
use exagate::sim::{Fault, SimOptions, Simulator};
use exagate::{Config, Launch, RunningGateway};
use http::{Method, StatusCode};
use tokio::net::TcpListener;

/// What every reload test starts from: a simulator, a fresh directory with a key file,
/// and where the config goes. Bind `dir` for the whole test (`dir: _dir`, not `dir: _`
/// or `..`, which drop it at once): dropping it deletes the directory.
struct Files {
    sim: Simulator,
    dir: tempfile::TempDir,
    key_file: PathBuf,
    config: PathBuf,
    port: u16,
}

async fn files(key: &str) -> Files {
    let dir = tempdir();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, key).expect("key");
    Files {
        sim: start_sim(false).await,
        config: dir.path().join("config.toml"),
        dir,
        key_file,
        port: free_port(),
    }
}

/// A config file for a gateway in front of `sim`, the key read from `key_file`.
fn write_config(path: &Path, sim: &Simulator, port: u16, key_file: &Path, extra: &str) {
    std::fs::write(
        path,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\n\
             drain_delay = \"0s\"\n\
             [upstream]\nurl = \"{}\"\napi_key_file = \"{}\"\ntimeout = \"2s\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n{extra}",
            sim.url(),
            key_file.display()
        ),
    )
    .expect("write config");
}

/// Rewrites the config so the gateway on `port` is known as `http://127.0.0.1:18443`.
fn move_public_url(config: &Path, port: u16) {
    let text = std::fs::read_to_string(config).expect("read config");
    let moved = text.replace(
        &format!("public_url = \"http://127.0.0.1:{port}\""),
        "public_url = \"http://127.0.0.1:18443\"",
    );
    assert_ne!(text, moved);
    std::fs::write(config, moved).expect("write config");
}

/// Starts a gateway from a config file, as the binary does, but in-process.
async fn start_from(path: &Path, watch: Option<Duration>) -> RunningGateway {
    let config = Config::load(path).expect("valid config");
    let key = ApiKey::load(&config.upstream).expect("key");
    let public = TcpListener::bind(config.server.listen).await.expect("bind");
    exagate::start(Launch {
        config,
        config_path: Some(path.to_path_buf()),
        watch_every: watch,
        key,
        public,
        admin: None,
    })
    .expect("start")
}

#[tokio::test]
async fn a_changed_ttl_applies_after_reload() {
    let Files {
        sim,
        dir: _dir,
        key_file,
        config,
        port,
    } = files(KEY).await;
    write_config(
        &config,
        &sim,
        port,
        &key_file,
        "[cache]\nfailed_ttl = \"30s\"\n",
    );
    let gw = start_from(&config, None).await;
    let c = client();
    let get = |id: uuid::Uuid| {
        let url = format!("{}{}", gw.url(), job_path(id));
        let c = c.clone();
        async move { send(&c, Method::GET, &url, &[], Bytes::new()).await }
    };
    let failed = sim.add_job(None, Some("failed"), time::OffsetDateTime::now_utc());
    assert_eq!(get(failed).await.cache(), "miss");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(get(failed).await.cache(), "hit", "30 s TTL");

    write_config(
        &config,
        &sim,
        port,
        &key_file,
        "[cache]\nfailed_ttl = \"200ms\"\n",
    );
    let warnings = gw.reload().await.expect("reload accepted");
    assert!(warnings.is_empty(), "{warnings:?}");
    let next = sim.add_job(None, Some("failed"), time::OffsetDateTime::now_utc());
    assert_eq!(get(next).await.cache(), "miss");
    assert_eq!(get(next).await.cache(), "hit");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(get(next).await.cache(), "miss", "the 200 ms TTL applies");
}

#[tokio::test]
async fn a_changed_public_url_empties_the_cache() {
    let Files {
        sim,
        dir: _dir,
        key_file,
        config,
        port,
    } = files(KEY).await;
    write_config(&config, &sim, port, &key_file, "");
    let gw = start_from(&config, None).await;
    let c = client();
    let url = format!("{}{}", gw.url(), job_path(sim.add_completed(None)));
    let chunks_link = |reply: &common::Reply| {
        reply.json()["links"]["chunks"]
            .as_str()
            .expect("a chunks link")
            .to_string()
    };
    let before = send(&c, Method::GET, &url, &[], Bytes::new()).await;
    assert_eq!(before.cache(), "miss");
    for _ in 0..2 {
        // The second of these comes from the front table: it must go too.
        assert_eq!(
            send(&c, Method::GET, &url, &[], Bytes::new()).await.cache(),
            "hit"
        );
    }
    assert!(chunks_link(&before).starts_with(&format!("http://127.0.0.1:{port}/")));

    // The same listener, now known to clients by another address (a new ingress).
    move_public_url(&config, port);
    gw.reload().await.expect("reload accepted");
    let after = send(&c, Method::GET, &url, &[], Bytes::new()).await;
    assert_eq!(
        after.cache(),
        "miss",
        "an answer with the old links was served"
    );
    assert!(
        chunks_link(&after).starts_with("http://127.0.0.1:18443/"),
        "{}",
        chunks_link(&after)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_under_way_when_the_public_url_changes_is_not_stored() {
    let Files {
        sim,
        dir: _dir,
        key_file,
        config,
        port,
    } = files(KEY).await;
    write_config(&config, &sim, port, &key_file, "");
    let gw = start_from(&config, None).await;
    let url = format!("{}{}", gw.url(), job_path(sim.add_completed(None)));
    // A fill that began under the old address, and takes 1.5 s (of a 2 s timeout).
    sim.set_fault_for(Fault::SlowAnswer(Duration::from_millis(1500)), 1);
    let c = client();
    let fill = tokio::spawn({
        let (c, url) = (c.clone(), url.clone());
        async move { send(&c, Method::GET, &url, &[], Bytes::new()).await }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    move_public_url(&config, port);
    gw.reload().await.expect("reload accepted");
    assert_eq!(fill.await.expect("fill").status, StatusCode::OK);
    let after = send(&c, Method::GET, &url, &[], Bytes::new()).await;
    assert_eq!(
        after.cache(),
        "miss",
        "the fill stored an answer with the old links after the reload"
    );
    let link = after.json()["links"]["chunks"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(link.starts_with("http://127.0.0.1:18443/"), "{link}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_max_concurrent_holds_while_calls_are_in_flight() {
    let Files {
        sim,
        dir: _dir,
        key_file,
        config,
        port,
    } = files(KEY).await;
    // `max_concurrent` goes in the [upstream] table the writer opens.
    let configure = |n: usize| {
        write_config(&config, &sim, port, &key_file, "");
        let text = std::fs::read_to_string(&config).expect("read config");
        let text = text.replace(
            "timeout = \"2s\"\n",
            &format!("timeout = \"2s\"\nmax_concurrent = {n}\n"),
        );
        std::fs::write(&config, text).expect("write config");
    };
    configure(2);
    let gw = start_from(&config, None).await;
    let c = client();
    let job = |id: uuid::Uuid| format!("{}{}", gw.url(), job_path(id));
    // Two slow calls fill both slots.
    sim.set_fault(Fault::Latency(Duration::from_millis(600)));
    let first: Vec<_> = (0..2)
        .map(|_| {
            let (c, url) = (c.clone(), job(sim.add_completed(None)));
            tokio::spawn(async move { send(&c, Method::GET, &url, &[], Bytes::new()).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    configure(1);
    gw.reload().await.expect("reload accepted");
    for call in first {
        assert_eq!(call.await.expect("call").status, StatusCode::OK);
    }
    // From the reload on, one call at a time: three 600 ms calls take 1.8 s in a row,
    // and the upstream never sees two at once.
    let started = std::time::Instant::now();
    let next: Vec<_> = (0..3)
        .map(|_| {
            let (c, url) = (c.clone(), job(sim.add_completed(None)));
            tokio::spawn(async move { send(&c, Method::GET, &url, &[], Bytes::new()).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for call in next {
        statuses.push(call.await.expect("call").status);
    }
    // Each waits at most half of upstream.timeout (1 s) for the slot: the first is
    // answered, the second queued behind it, the third turned away busy.
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let busy = statuses
        .iter()
        .filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    assert_eq!((ok, busy), (2, 1), "{statuses:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(1200),
        "two calls ran at once after lowering the limit"
    );
}

#[tokio::test]
async fn a_bad_file_is_refused_and_the_old_config_keeps_serving() {
    let Files {
        sim,
        dir,
        key_file,
        config,
        port,
    } = files(KEY).await;
    write_config(&config, &sim, port, &key_file, "");
    let gw = start_from(&config, None).await;
    for bad in [
        "[cache]\nfailed_ttl = \"soon\"\n",
        "[cache]\nunknown_key = 1\n",
        "[[clients]]\nname = \"x\"\ntoken_sha256 = \"nothex\"\n",
    ] {
        write_config(&config, &sim, port, &key_file, bad);
        let why = gw.reload().await.expect_err("bad config refused");
        assert!(!why.is_empty());
    }
    // A missing key file is refused too.
    write_config(&config, &sim, port, &dir.path().join("missing-key"), "");
    assert!(gw.reload().await.is_err());
    let id = sim.add_completed(None);
    let url = format!("{}{}", gw.url(), job_path(id));
    let reply = send(&client(), Method::GET, &url, &[], Bytes::new()).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "still serving with the old config"
    );
    assert_eq!(
        gw.gateway
            .metrics
            .reloads
            .get_or_create(&exagate::metrics::ResultLabels { result: "error" })
            .get(),
        4
    );
}

#[tokio::test]
async fn settings_that_need_a_restart_are_named() {
    let Files {
        sim,
        dir: _dir,
        key_file,
        config,
        port,
    } = files(KEY).await;
    write_config(&config, &sim, port, &key_file, "");
    let gw = start_from(&config, None).await;
    write_config(
        &config,
        &sim,
        free_port(),
        &key_file,
        "[cache]\nmax_size = \"1GiB\"\n",
    );
    let warnings = gw.reload().await.expect("accepted");
    let text = warnings.join("; ");
    assert!(text.contains("server.listen"), "{text}");
    assert!(text.contains("cache.max_size"), "{text}");
    // A later reload that changes something else still names what does not run yet:
    // the comparison is with the running process, not with the file loaded last.
    let moved = free_port();
    write_config(
        &config,
        &sim,
        moved,
        &key_file,
        "[cache]\nmax_size = \"1GiB\"\nfailed_ttl = \"5s\"\n",
    );
    let text = gw.reload().await.expect("accepted").join("; ");
    assert!(
        text.contains("server.listen") && text.contains("cache.max_size"),
        "{text}"
    );
    // Connection timeouts are set when the listener starts: named too.
    write_config(&config, &sim, port, &key_file, "");
    let text = std::fs::read_to_string(&config).expect("read config");
    let timed = text.replace(
        "drain_delay = \"0s\"\n",
        "drain_delay = \"0s\"\nidle_timeout = \"3s\"\nheader_read_timeout = \"2s\"\n",
    );
    assert_ne!(text, timed);
    std::fs::write(&config, timed).expect("write config");
    let text = gw.reload().await.expect("accepted").join("; ");
    assert!(!text.contains("server.listen"), "back to what runs: {text}");
    assert!(
        text.contains("server.idle_timeout") && text.contains("server.header_read_timeout"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_takes_effect_with_every_request_in_flight_answered() {
    // The upstream accepts only the new key.
    let new_key = "exa-rotated-key-55e1";
    let sim = Simulator::start(SimOptions {
        api_key: new_key.to_string(),
        ..SimOptions::default()
    })
    .await
    .expect("sim");
    let dir = tempdir();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, KEY).expect("old key");
    let config = dir.path().join("config.toml");
    let port = free_port();
    write_config(
        &config,
        &sim,
        port,
        &key_file,
        "[cache]\nnot_found_ttl = \"0s\"\n",
    );
    let gw = Arc::new(start_from(&config, None).await);

    // Requests keep flowing through the rotation.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, answered, gw) = (Arc::clone(&stop), Arc::clone(&answered), Arc::clone(&gw));
        load.push(tokio::spawn(async move {
            let c = client();
            let mut statuses = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let url = format!("{}/v2/extract/{}", gw.url(), uuid::Uuid::new_v4());
                let reply = send(&c, Method::GET, &url, &[], Bytes::new()).await;
                statuses.push(reply.status);
                answered.fetch_add(1, Ordering::SeqCst);
            }
            statuses
        }));
    }
    let id = sim.add_completed(None);
    let url = format!("{}{}", gw.url(), job_path(id));
    let before = send(&client(), Method::GET, &url, &[], Bytes::new()).await;
    assert_eq!(
        before.status,
        StatusCode::UNAUTHORIZED,
        "the old key is refused upstream"
    );

    std::fs::write(&key_file, format!("{new_key}\n")).expect("rotate");
    gw.reload().await.expect("reload");
    let after = send(&client(), Method::GET, &url, &[], Bytes::new()).await;
    assert_eq!(after.status, StatusCode::OK, "the new key is used");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for task in load {
        let statuses = task.await.expect("load task");
        for status in &statuses {
            assert!(
                *status == StatusCode::UNAUTHORIZED || *status == StatusCode::NOT_FOUND,
                "every request answered by the upstream, with the old or the new key: {status}"
            );
        }
        total += statuses.len();
    }
    assert!(total > 10, "the load ran: {total}");
    assert_eq!(total, answered.load(Ordering::SeqCst));
}

#[tokio::test]
async fn a_changed_file_is_picked_up_without_a_signal() {
    let Files {
        sim,
        dir: _dir,
        key_file,
        config,
        port,
    } = files(KEY).await;
    write_config(
        &config,
        &sim,
        port,
        &key_file,
        "[cache]\nfailed_ttl = \"30s\"\n",
    );
    let gw = start_from(&config, Some(Duration::from_millis(100))).await;
    // A different length guarantees a different stamp even within one mtime tick.
    write_config(
        &config,
        &sim,
        port,
        &key_file,
        "[cache]\nfailed_ttl = \"250ms\"\n\n",
    );
    let mut applied = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if gw.gateway.live().config.cache.failed_ttl == Duration::from_millis(250) {
            applied = true;
            break;
        }
    }
    assert!(applied, "the watcher did not reload the changed file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_binary_and_sigterm_drains_it() {
    let Files {
        sim,
        key_file,
        config,
        port,
        dir: _dir,
    } = files("exa-wrong-key").await;
    write_config(
        &config,
        &sim,
        port,
        &key_file,
        "[cache]\nnot_found_ttl = \"0s\"\n",
    );
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_exagate"))
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn"),
    );
    wait_listening(port).await;
    let id = sim.add_completed(None);
    let url = format!("http://127.0.0.1:{port}{}", job_path(id));
    let c = client();
    assert_eq!(
        send(&c, Method::GET, &url, &[], Bytes::new()).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Rotate the key on disk, then SIGHUP. (The file watcher would also notice; a long
    // interval keeps this test about the signal.)
    std::fs::write(&key_file, KEY).expect("rotate");
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill")
        .success());
    let mut ok = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if send(&c, Method::GET, &url, &[], Bytes::new()).await.status == StatusCode::OK {
            ok = true;
            break;
        }
    }
    assert!(ok, "the rotated key was not picked up after SIGHUP");
    // The process is still the same one: no restart.
    assert!(child.try_wait().expect("wait").is_none());
    sim.set_fault(Fault::None);
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("exit");
    assert!(status.success(), "{status:?}");
}
