//! Child processes and state directories whose lifetime is tied to this process (or detached).

use std::ffi::CString;
use std::fs::{self, DirBuilder, File};
use std::io::{self, Read};
use std::net::TcpListener;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, Once, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Prefix of every state directory this crate creates under the system temp dir.
pub(crate) const STATE_DIR_PREFIX: &str = "bulwark-testenv-";

/// A user the child switches to before exec (only used when running as root).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Credentials {
    pub uid: u32,
    pub gid: u32,
}

/// How a tracked process is asked to stop when this process exits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StopPolicy {
    pub signal: i32,
    pub grace: Duration,
}

impl StopPolicy {
    pub(crate) const KILL: StopPolicy = StopPolicy {
        signal: libc::SIGKILL,
        grace: Duration::ZERO,
    };
}

type SpawnJob = Box<dyn FnOnce() + Send>;

/// Children get `PR_SET_PDEATHSIG`, which fires when the *thread* that forked them exits, so
/// every tied child is forked by this one thread that lives as long as the process.
fn spawner() -> &'static mpsc::Sender<SpawnJob> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnJob>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        thread::Builder::new()
            .name("testenv-spawner".into())
            .spawn(move || {
                // The sender lives in a static, so this loop never ends.
                for job in rx {
                    job();
                }
            })
            .expect("cannot start the testenv spawner thread");
        tx
    })
}

/// Spawns `cmd` so that it is SIGKILLed when this process dies, however it dies.
pub(crate) fn spawn_tied(mut cmd: Command, run_as: Option<Credentials>) -> io::Result<Child> {
    if let Some(creds) = run_as {
        // std switches credentials before running pre_exec hooks, so pdeathsig set below survives.
        cmd.gid(creds.gid).uid(creds.uid);
    }
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the hook only makes async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl; then nobody would signal us.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    spawner()
        .send(Box::new(move || {
            let _ = tx.send(cmd.spawn());
        }))
        .map_err(|_| io::Error::other("testenv spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("testenv spawner thread dropped the request"))?
}

/// Spawns `cmd` so that it is SIGKILLed when this process dies, however it dies (an operator
/// under test or benchmark must not outlive a killed test run).
pub fn spawn_with_parent(cmd: &mut Command) -> io::Result<Child> {
    spawn_tied(std::mem::replace(cmd, Command::new("true")), None)
}

/// Spawns `cmd` in its own session so that it outlives this process.
pub(crate) fn spawn_detached(mut cmd: Command) -> io::Result<Child> {
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.stdin(Stdio::null()).spawn()
}

#[derive(Default)]
struct Registry {
    processes: Vec<(i32, StopPolicy)>,
    dirs: Vec<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    processes: Vec::new(),
    dirs: Vec::new(),
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Statics never run Drop, so an atexit hook stops tracked children and removes tracked dirs.
fn ensure_atexit_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        // SAFETY: registering a plain extern "C" fn.
        unsafe {
            libc::atexit(cleanup_at_exit);
        }
    });
}

extern "C" fn cleanup_at_exit() {
    // A thread may hold the lock while the process exits; give up rather than deadlock.
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut guard = loop {
        match REGISTRY.try_lock() {
            Ok(g) => break g,
            Err(std::sync::TryLockError::Poisoned(e)) => break e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10))
            }
            Err(std::sync::TryLockError::WouldBlock) => return,
        }
    };
    let registry = std::mem::take(&mut *guard);
    drop(guard);
    stop_children(&registry.processes);
    for dir in &registry.dirs {
        let _ = fs::remove_dir_all(dir);
    }
}

/// Sends each its stop signal, waits out the longest grace period, then SIGKILLs and reaps.
pub(crate) fn stop_children(processes: &[(i32, StopPolicy)]) {
    for &(pid, policy) in processes {
        // SAFETY: plain syscall.
        unsafe { libc::kill(pid, policy.signal) };
    }
    let grace = processes
        .iter()
        .map(|(_, p)| p.grace)
        .max()
        .unwrap_or_default();
    let deadline = Instant::now() + grace;
    let mut remaining: Vec<i32> = processes.iter().map(|(pid, _)| *pid).collect();
    loop {
        remaining.retain(|&pid| !reap_nonblocking(pid));
        if remaining.is_empty() || Instant::now() >= deadline {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    for pid in remaining {
        // SAFETY: plain syscalls on our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }
}

/// True when `pid` (our child) has exited and was reaped, or is not ours to wait for.
fn reap_nonblocking(pid: i32) -> bool {
    let mut status = 0;
    // SAFETY: plain syscall.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    r == pid || r < 0
}

pub(crate) fn track_process(pid: u32, policy: StopPolicy) {
    ensure_atexit_hook();
    registry().processes.push((pid as i32, policy));
}

pub(crate) fn untrack_process(pid: u32) {
    registry().processes.retain(|(p, _)| *p != pid as i32);
}

pub(crate) fn untrack_dir(dir: &Path) {
    registry().dirs.retain(|d| d != dir);
}

/// Creates a fresh 0700 dir under the temp dir, removed at exit unless untracked first.
pub(crate) fn create_state_dir(kind: &str) -> anyhow::Result<PathBuf> {
    sweep_stale_state_dirs();
    let base = std::env::temp_dir();
    for _ in 0..16 {
        let path = base.join(format!(
            "{STATE_DIR_PREFIX}{kind}-{}-{}",
            std::process::id(),
            random_hex(4)
        ));
        match DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => {
                fs::write(path.join("owner.pid"), std::process::id().to_string())?;
                ensure_atexit_hook();
                registry().dirs.push(path.clone());
                return Ok(path);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
    }
    bail!("cannot create a unique state dir under {}", base.display())
}

/// A test binary killed by a signal never runs atexit; remove the dirs its owner left behind.
fn sweep_stale_state_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(STATE_DIR_PREFIX)
        {
            continue;
        }
        let owner = fs::read_to_string(entry.path().join("owner.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        // SAFETY: signal 0 only checks existence.
        if let Some(pid) = owner
            && unsafe { libc::kill(pid, 0) } != 0
            && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
        {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("reading /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Picks `n` distinct free loopback ports (all listeners are held until every port is chosen).
pub(crate) fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<io::Result<Vec<_>>>()
        .context("binding 127.0.0.1:0 to pick a free port")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// Looks up a system user; `None` when it does not exist.
pub(crate) fn lookup_user(name: &str) -> Option<Credentials> {
    let cname = CString::new(name).ok()?;
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; getpwnam_r is the thread-safe variant.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(Credentials {
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
    })
}

pub(crate) fn is_root() -> bool {
    // SAFETY: plain syscall.
    unsafe { libc::geteuid() == 0 }
}

pub(crate) fn chown(path: &Path, creds: Credentials) -> anyhow::Result<()> {
    std::os::unix::fs::chown(path, Some(creds.uid), Some(creds.gid))
        .with_context(|| format!("chown {}", path.display()))
}

/// True when `pid` is a live (non-zombie) process whose argv[0] names `binary`.
pub(crate) fn pid_runs(pid: i32, binary: &str) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let argv0 = Path::new(std::str::from_utf8(argv0).unwrap_or_default());
    argv0.file_name().and_then(|n| n.to_str()) == Some(binary) && !pid_exited(pid)
}

/// True once `pid` is gone or a zombie (an exiting process loses its cmdline before that).
pub(crate) fn pid_exited(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // The state letter follows the ")" that closes the command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    matches!(state, Some('Z') | Some('X') | None)
}

/// The last `lines` lines of a log file, for error messages.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Runs `f` to completion on a private runtime, callable from sync code inside or outside tokio.
pub(crate) fn block_on<F>(f: F) -> F::Output
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building a tokio runtime")
                .block_on(f)
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}
