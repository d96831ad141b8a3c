//! The processes under test (simulator, gateway, bare server, nginx), started from
//! generated configs in a temporary directory and stopped when dropped, plus what the
//! harness reads about the machine.

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue};

use crate::BoxError;

/// The key the simulator accepts; the gateway gets it from `EXABASE_API_KEY`, nginx from
/// its config. A throwaway value for a loopback-only simulator.
pub const SIM_KEY: &str = "sim-key";

/// The headers of a call straight to the simulator: its key.
pub fn sim_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("x-api-key", HeaderValue::from_static(SIM_KEY));
    headers
}

/// A child process, stopped (SIGTERM, then SIGKILL after 5 s) when dropped, so that a
/// failing scenario does not leave servers behind.
pub struct Proc {
    pub name: &'static str,
    pub child: Child,
    /// Where its stderr goes.
    pub stderr: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it and waits for it.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SIGTERM, not SIGKILL: nginx's master must take its workers down with it, and
        // the exagate binaries shut down cleanly on it.
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Fails if it has exited, quoting the end of its stderr.
    pub fn check_alive(&mut self) -> Result<(), BoxError> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(
                format!("{} exited ({status}):\n{}", self.name, self.stderr_tail(15)).into(),
            );
        }
        Ok(())
    }

    /// The last `lines` lines of its stderr.
    pub fn stderr_tail(&self, lines: usize) -> String {
        let err = fs::read_to_string(&self.stderr).unwrap_or_default();
        let mut tail: Vec<&str> = err.lines().rev().take(lines).collect();
        tail.reverse();
        tail.join("\n")
    }

    /// What is known about it after a failed measurement: running or not, the end of its
    /// stderr, and the free disk where the logs go (a full disk was once the cause).
    pub fn diagnose(&self) -> String {
        // Read from /proc rather than `try_wait`, which needs the child mutably: an exited
        // child not yet reaped is a zombie (state `Z`).
        let running = fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .ok()
            .and_then(|stat| {
                let state = stat
                    .rsplit_once(')')?
                    .1
                    .split_whitespace()
                    .next()?
                    .to_string();
                Some(state != "Z")
            })
            .unwrap_or(false);
        let state = format!(
            "{} {}; the end of its stderr:\n{}",
            self.name,
            if running {
                "is still running"
            } else {
                "has exited"
            },
            self.stderr_tail(15)
        );
        let disk = self
            .stderr
            .parent()
            .and_then(free_bytes)
            .map_or_else(|| "unknown".to_string(), format_bytes);
        format!("{state}\nfree disk in the work dir: {disk}")
    }

    /// Waits until `addr` accepts connections (at most 15 s).
    pub fn wait_listening(&mut self, addr: SocketAddr) -> Result<(), BoxError> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            self.check_alive()?;
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{} is not listening on {addr} after 15 s", self.name).into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident set size in bytes (`VmRSS` of /proc/PID/status).
    pub fn rss_bytes(&self) -> Result<u64, BoxError> {
        status_kib(self.pid(), "VmRSS:").map(|kib| kib * 1024)
    }

    /// Peak resident set size in bytes (`VmHWM`).
    pub fn peak_rss_bytes(&self) -> Result<u64, BoxError> {
        status_kib(self.pid(), "VmHWM:").map(|kib| kib * 1024)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.terminate();
    }
}

fn status_kib(pid: u32, field: &str) -> Result<u64, BoxError> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no {field} in /proc/{pid}/status").into())
}

/// Free bytes on the file system holding `path` (statvfs), for an unprivileged user.
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs with a NUL-terminated path and a pointer to a zeroed local struct.
    let stat = unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c_path.as_ptr(), &mut stat) != 0 {
            return None;
        }
        stat
    };
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// `1.5 GiB`, `300.0 MiB`.
pub fn format_bytes(bytes: u64) -> String {
    let mib = bytes as f64 / 1048576.0;
    if mib >= 1024.0 {
        format!("{:.1} GiB", mib / 1024.0)
    } else {
        format!("{mib:.1} MiB")
    }
}

/// A port free on 127.0.0.1 right now, for a server to take (see
/// [`exagate::sim::free_port`] for why not `bind(0)`).
pub fn free_addr() -> Result<SocketAddr, BoxError> {
    Ok(SocketAddr::from((
        Ipv4Addr::LOCALHOST,
        exagate::sim::free_port()?,
    )))
}

/// The exagate binary: `$EXAGATE_BIN`, else the one cargo built for this bench (cargo
/// builds the package's binaries before its benches, in the same profile).
pub fn exagate_bin() -> PathBuf {
    std::env::var_os("EXAGATE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_exagate")))
}

/// A running `exagate sim` and the job ids it created.
pub struct Sim {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub ids: Vec<String>,
}

/// Starts `exagate sim` with `jobs` completed jobs padded to `padding` bytes.
/// `padding`: every body's length (`2048`) or their spread (`1024-8192`).
pub fn start_sim(
    dir: &Path,
    name: &str,
    jobs: usize,
    padding: impl std::fmt::Display,
) -> Result<Sim, BoxError> {
    let addr = free_addr()?;
    let stderr = dir.join(format!("{name}.stderr"));
    let child = Command::new(exagate_bin())
        .args(["sim", "--listen", &addr.to_string(), "--key", SIM_KEY])
        .args([
            "--jobs",
            &jobs.to_string(),
            "--padding",
            &padding.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(&stderr)?)
        .spawn()?;
    let mut proc = Proc {
        name: "simulator",
        child,
        stderr,
    };
    let stdout = proc.child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let url = lines.next().ok_or("the simulator printed nothing")??;
    if url != format!("http://{addr}") {
        return Err(format!("the simulator says {url}, expected http://{addr}").into());
    }
    let mut ids = Vec::with_capacity(jobs);
    for line in lines.by_ref().take(jobs) {
        ids.push(line?);
    }
    if ids.len() != jobs {
        proc.check_alive()?;
        return Err(format!("the simulator printed {} ids, not {jobs}", ids.len()).into());
    }
    proc.wait_listening(addr)?;
    Ok(Sim { proc, addr, ids })
}

/// Access logging on or off, set alike on every server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logging {
    /// One line per request, written to a file.
    On,
    /// No per-request line.
    Off,
}

impl Logging {
    pub fn label(self) -> &'static str {
        match self {
            Logging::On => "log on",
            Logging::Off => "log off",
        }
    }
}

/// A server under test.
pub struct Server {
    pub proc: Proc,
    pub addr: SocketAddr,
    /// The gateway's admin listener (`/metrics`); `None` for the other servers.
    pub admin: Option<SocketAddr>,
}

/// Starts the gateway in front of the simulator at `sim`, from a generated config.
pub fn start_gateway(
    dir: &Path,
    name: &str,
    sim: SocketAddr,
    logging: Logging,
    cache_size: &str,
) -> Result<Server, BoxError> {
    start_gateway_with(dir, name, sim, logging, cache_size, "")
}

/// [`start_gateway`], with `extra` appended to its config (a `[shared]` section).
pub fn start_gateway_with(
    dir: &Path,
    name: &str,
    sim: SocketAddr,
    logging: Logging,
    cache_size: &str,
    extra: &str,
) -> Result<Server, BoxError> {
    let cache = format!("max_size = \"{cache_size}\"");
    gateway_process(dir, name, sim, logging, &cache, extra)
}

/// [`start_gateway`], with its cache held compressed or not (`cache.compress`).
pub fn start_gateway_compressing(
    dir: &Path,
    name: &str,
    sim: SocketAddr,
    cache_size: &str,
    compress: bool,
) -> Result<Server, BoxError> {
    let cache = format!("max_size = \"{cache_size}\"\ncompress = {compress}");
    gateway_process(dir, name, sim, Logging::Off, &cache, "")
}

/// A gateway process in front of `sim`, its `[cache]` section's lines `cache`, and
/// `extra` appended to its config.
fn gateway_process(
    dir: &Path,
    name: &str,
    sim: SocketAddr,
    logging: Logging,
    cache: &str,
    extra: &str,
) -> Result<Server, BoxError> {
    let addr = free_addr()?;
    let admin = free_addr()?;
    let level = match logging {
        // The access line is an `info` event on `exagate::access`.
        Logging::On => "info",
        Logging::Off => "warn",
    };
    let config = format!(
        r#"# Generated by benches/load.
[server]
listen = "{addr}"
public_url = "http://{addr}"
# The harness stops servers with SIGTERM; nothing to drain for.
drain_delay = "0s"

[upstream]
url = "http://{sim}"
api_key_env = "EXABASE_API_KEY"

[cache]
{cache}

[admin]
listen = "{admin}"

[log]
level = "{level}"
format = "text"
{extra}"#
    );
    let path = dir.join(format!("{name}.toml"));
    fs::write(&path, config)?;
    // Access lines go to stderr: a file here, as a service manager would do.
    let stderr = dir.join(format!("{name}.log"));
    let mut command = Command::new(exagate_bin());
    command
        .arg("--config")
        .arg(&path)
        .env("EXABASE_API_KEY", SIM_KEY)
        .env_remove("RUST_LOG");
    let mut server = launch(command, "exagate", addr, stderr)?;
    server.admin = Some(admin);
    Ok(server)
}

/// Spawns `command` with its stderr to the file `stderr`, and waits until it listens on
/// `addr`.
fn launch(
    mut command: Command,
    name: &'static str,
    addr: SocketAddr,
    stderr: PathBuf,
) -> Result<Server, BoxError> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&stderr)?)
        .spawn()?;
    let mut proc = Proc {
        name,
        child,
        stderr,
    };
    proc.wait_listening(addr)?;
    Ok(Server {
        proc,
        addr,
        admin: None,
    })
}

/// Starts the bare hyper server (this bench binary re-executed with `--serve-bare`),
/// serving the bodies in `bodies` by path.
pub fn start_bare(
    dir: &Path,
    name: &str,
    bodies: &Path,
    logging: Logging,
) -> Result<Server, BoxError> {
    let addr = free_addr()?;
    let stderr = dir.join(format!("{name}.log"));
    let mut command = Command::new(std::env::current_exe()?);
    command
        .arg("--serve-bare")
        .arg(addr.to_string())
        .arg(bodies);
    if logging == Logging::On {
        command.arg("--log");
    }
    launch(command, "bare server", addr, stderr)
}

/// Starts nginx in the foreground with its own prefix under `dir`: a `proxy_cache` in
/// front of the simulator doing the gateway's job (key injected, links rewritten to its
/// own origin with `sub_filter`, 200s cached for 10 minutes).
pub fn start_nginx(
    dir: &Path,
    name: &str,
    sim: SocketAddr,
    logging: Logging,
) -> Result<Server, BoxError> {
    let addr = free_addr()?;
    let prefix = dir.join(name);
    for sub in [
        "cache",
        "tmp/body",
        "tmp/proxy",
        "tmp/fastcgi",
        "tmp/uwsgi",
        "tmp/scgi",
    ] {
        fs::create_dir_all(prefix.join(sub))?;
    }
    let p = prefix.display();
    let access_log = match logging {
        Logging::On => format!("access_log {p}/access.log combined;"),
        Logging::Off => "access_log off;".to_string(),
    };
    // As root, the workers would otherwise run as `nobody` and could not write the cache
    // under a root-owned temporary directory. Off root the directive is ignored.
    let user = if is_root() { "user root;" } else { "" };
    let config = format!(
        r#"# Generated by benches/load.
daemon off;
master_process on;
worker_processes auto;
{user}
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    default_type application/octet-stream;
    {access_log}
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
    sendfile on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    proxy_cache_path {p}/cache levels=1:2 keys_zone=jobs:64m max_size=2g inactive=60m use_temp_path=off;
    upstream exabase {{
        server {sim};
        keepalive 64;
    }}
    server {{
        # One listening socket per worker: without it one worker can end up with most
        # of the benchmark's connections and nginx runs on one core.
        listen {addr} reuseport;
        location /v2/extract/ {{
            proxy_pass http://exabase;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host {sim};
            # The key is injected; whatever a client sends is dropped.
            proxy_set_header X-Api-Key {key};
            proxy_set_header Authorization "";
            # sub_filter cannot rewrite a compressed body.
            proxy_set_header Accept-Encoding "";
            proxy_cache jobs;
            # Same key as the gateway's: scope (base) and job.
            proxy_cache_key "$http_x_exabase_base_id|$request_uri";
            proxy_cache_valid 200 10m;
            # Concurrent misses share one upstream call, like the gateway's flights.
            proxy_cache_lock on;
            add_header X-Cache $upstream_cache_status;
            # Links to the upstream origin become links to this server.
            sub_filter "http://{sim}" "http://{addr}";
            sub_filter_once off;
            sub_filter_types application/json;
        }}
    }}
}}
"#,
        key = SIM_KEY,
    );
    let conf = prefix.join("nginx.conf");
    fs::write(&conf, config)?;
    let stderr = prefix.join("stderr.log");
    let child = Command::new(nginx_bin().ok_or("nginx is not installed")?)
        .arg("-p")
        .arg(&prefix)
        .arg("-e")
        .arg(prefix.join("error.log"))
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&stderr)?)
        .spawn()?;
    let mut proc = Proc {
        name: "nginx",
        child,
        stderr,
    };
    proc.wait_listening(addr)?;
    Ok(Server {
        proc,
        addr,
        admin: None,
    })
}

/// Runs as root (apt-get works, nginx needs `user root`).
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// nginx, where Debian puts it or on PATH.
pub fn nginx_bin() -> Option<PathBuf> {
    [
        "/usr/sbin/nginx",
        "/usr/local/sbin/nginx",
        "/usr/local/nginx/sbin/nginx",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .or_else(|| which("nginx"))
}

/// A program on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

/// Installs the Debian packages with apt-get (running `apt-get update` first if the
/// install fails on a stale list). Only as root.
pub fn apt_install(packages: &[&str]) -> Result<(), BoxError> {
    if !is_root() {
        return Err(format!(
            "not root: install {} yourself (apt-get install -y {})",
            packages.join(", "),
            packages.join(" ")
        )
        .into());
    }
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
    };
    if install()?.success() {
        return Ok(());
    }
    let updated = Command::new("apt-get")
        .args(["update", "-qq"])
        .stdout(Stdio::null())
        .status()?;
    if updated.success() && install()?.success() {
        return Ok(());
    }
    Err(format!("apt-get install {} failed", packages.join(" ")).into())
}

/// The first line of a command's output (stdout, else stderr), for tool versions.
pub fn version_of(program: &Path, arg: &str) -> String {
    Command::new(program)
        .arg(arg)
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|_| "?".to_string())
}

/// What the machine is: cores, CPU model, kernel, memory.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string());
    let memory = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or_else(
            || "?".to_string(),
            |kib| format!("{:.1} GiB", kib as f64 / 1048576.0),
        );
    format!("{cores} cores (nproc), {cpu}, Linux {kernel}, {memory} RAM")
}

/// Raises the soft open-files limit to the hard one (at most 65536): the coalescing
/// scenario holds 2000 sockets in this process, and the children inherit the limit.
pub fn raise_nofile() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            let want = limit.rlim_max.min(65536);
            if limit.rlim_cur < want {
                limit.rlim_cur = want;
                let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
        }
    }
}

/// Jiffies spent by all CPUs since boot: (stolen by the hypervisor, total), from the
/// first line of /proc/stat. Two readings give the share of a run that the machine lost
/// to its neighbours.
pub fn cpu_steal() -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal guest guest_nice; guest time is
    // already counted in user.
    let total: u64 = fields.iter().take(8).sum();
    Some((*fields.get(7)?, total))
}

/// CPU seconds: (spent by everyone in user and system mode, spent by this process and
/// its reaped descendants). Two readings tell how much CPU other work on the machine
/// took during a run: on a 2-core machine a concurrent build skews every figure.
pub fn cpu_seconds() -> Option<(f64, f64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // user + nice + system: irq and softirq time is not charged to any process.
    let everyone = (fields.first()? + fields.get(1)? + fields.get(2)?) as f64 / hz;
    let mut mine = 0.0;
    for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
        // SAFETY: getrusage with a valid pointer to a zeroed local struct.
        let usage = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            if libc::getrusage(who, &mut usage) != 0 {
                return None;
            }
            usage
        };
        for t in [usage.ru_utime, usage.ru_stime] {
            mine += t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        }
    }
    Some((everyone, mine))
}
