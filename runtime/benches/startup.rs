//! Performance figures of the runtime, as a bench binary:
//!
//! 1. whole-process wall time and peak RSS of a stage through the CLI, with
//!    a cold (empty) and a warm compiled-code cache;
//! 2. per embedded connector: cold compile vs load from the cache
//!    (in-process, median);
//! 3. the cost of one capability check.
//!
//! Run: `cargo bench -p tfdc-runtime --bench startup` (optionally
//! `-- --runs 30`). Medians; the machines are noisy, trust ratios.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Runs `cmd`, returning wall time and peak RSS (KiB) of the child.
fn run_measured(cmd: &mut Command) -> (Duration, i64, i32) {
    let start = Instant::now();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: plain wait4 on our own child; rusage is written by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4");
    let elapsed = start.elapsed();
    std::mem::forget(child);
    (elapsed, usage.ru_maxrss, libc::WEXITSTATUS(status))
}

struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        Self::with_config("agent_name: bench\ndevice_ip: 192.0.2.1\n")
    }

    fn with_config(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("default.yaml"), config).unwrap();
        std::fs::write(
            dir.path().join("testflinger.json"),
            r#"{"job_id":"bench","provision_data":{"url":"http://x/y"}}"#,
        )
        .unwrap();
        Scratch { dir }
    }

    fn command(&self, cache: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_testflinger-device-connectors"));
        c.args(args)
            .current_dir(self.dir.path())
            .env("TFDC_CACHE_DIR", cache)
            .env("HOME", self.dir.path());
        c
    }
}

fn bench_process(runs: usize, label: &str, args: &[&str]) {
    bench_process_in(runs, label, args, &Scratch::new());
}

fn bench_process_in(runs: usize, label: &str, args: &[&str], scratch: &Scratch) {
    let mut cold = Vec::new();
    let mut cold_rss = Vec::new();
    for i in 0..runs.min(10) {
        let cache = scratch.dir.path().join(format!("cold-cache-{i}"));
        let (t, rss, code) = run_measured(&mut scratch.command(&cache, args));
        assert_eq!(code, 0, "{label} failed");
        cold.push(t);
        cold_rss.push(rss);
    }
    let warm_cache = scratch.dir.path().join("warm-cache");
    run_measured(&mut scratch.command(&warm_cache, args));
    let mut warm = Vec::new();
    let mut warm_rss = Vec::new();
    for _ in 0..runs {
        let (t, rss, code) = run_measured(&mut scratch.command(&warm_cache, args));
        assert_eq!(code, 0, "{label} failed");
        warm.push(t);
        warm_rss.push(rss);
    }
    cold_rss.sort();
    warm_rss.sort();
    println!(
        "{label:<34} cold {:>8.1} ms  {:>6.1} MB   warm {:>7.2} ms  {:>6.1} MB",
        median(cold).as_secs_f64() * 1e3,
        cold_rss[cold_rss.len() / 2] as f64 / 1024.0,
        median(warm).as_secs_f64() * 1e3,
        warm_rss[warm_rss.len() / 2] as f64 / 1024.0,
    );
}

/// `noprovision provision` against a simulated device that answers (the
/// common case: one SSH login and `/bin/true`).
fn bench_noprovision(runs: usize) {
    let dut = labsim::dut::Dut::start("127.0.0.3").unwrap();
    let scratch = Scratch::with_config(&format!("agent_name: bench\ndevice_ip: {}\n", dut.ip()));
    dut.configure_client(scratch.dir.path()).unwrap();
    bench_process_in(
        runs,
        "noprovision provision (SSH probe)",
        &[
            "noprovision",
            "provision",
            "-c",
            "default.yaml",
            "testflinger.json",
        ],
        &scratch,
    );
}

/// One more `exec` on an already open SSH connection.
fn bench_exec(runs: usize) {
    let dut = labsim::dut::Dut::start("127.0.0.3").unwrap();
    let home = tempfile::tempdir().unwrap();
    dut.configure_client(home.path()).unwrap();
    let config = tfdc::config::DeviceConfig::parse(
        Path::new("d.yaml"),
        &format!("device_ip: {}\n", dut.ip()),
    )
    .unwrap();
    let job = tfdc::job_file::JobFile::empty();
    let limits = tfdc::limits::Limits::default();
    let pool = tfdc::ssh::SshPool::new(&config, &job, &limits)
        .unwrap()
        .with_home(home.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let t = Duration::from_secs(10);
        let start = Instant::now();
        let conn = pool.connect("device", None, t).await.unwrap();
        let connect = start.elapsed();
        let mut times = Vec::new();
        for _ in 0..runs.max(10) {
            let start = Instant::now();
            let out = conn.exec("true", t, false).await.unwrap();
            times.push(start.elapsed());
            assert_eq!(out.status, 0);
        }
        println!(
            "{:<34} connect+auth {:>6.2} ms   one more exec {:>6.2} ms (median, device runs /bin/sh -c true)",
            "ssh (russh client, simulated DUT)",
            connect.as_secs_f64() * 1e3,
            median(times).as_secs_f64() * 1e3
        );
    });
}

fn bench_python(runs: usize) {
    let mut times = Vec::new();
    for _ in 0..runs {
        let (t, _, code) =
            run_measured(Command::new("python3").args(["-c", "import yaml, requests, json"]));
        if code != 0 {
            println!(
                "{:<34} (python3 with yaml and requests not available)",
                "reference start-up floor"
            );
            return;
        }
        times.push(t);
    }
    println!(
        "{:<34} {:>8.1} ms  (python3 -c 'import yaml, requests, json')",
        "reference start-up floor",
        median(times).as_secs_f64() * 1e3
    );
}

fn bench_compile(runs: usize) {
    let engine = tfdc::engine::engine();
    for e in tfdc::connectors::EMBEDDED {
        let mut compile = Vec::new();
        for _ in 0..runs.min(10) {
            let start = Instant::now();
            let _ = wasmtime::component::Component::new(engine, e.bytes).unwrap();
            compile.push(start.elapsed());
        }
        let dir = tempfile::tempdir().unwrap();
        let cache = tfdc::cache::CodeCache::new(dir.path(), 1 << 30);
        cache.load(e.bytes, e.digest).unwrap();
        let mut load = Vec::new();
        for _ in 0..runs {
            let start = Instant::now();
            let (_, path) = cache.load(e.bytes, e.digest).unwrap();
            load.push(start.elapsed());
            assert_eq!(path, tfdc::engine::LoadPath::Cached);
        }
        let (c, l) = (median(compile), median(load));
        println!(
            "{:<34} compile {:>7.1} ms   cached load {:>6.3} ms   ratio {:>5.0}x   ({} KB)",
            e.name,
            c.as_secs_f64() * 1e3,
            l.as_secs_f64() * 1e3,
            c.as_secs_f64() / l.as_secs_f64(),
            e.bytes.len() / 1024
        );
    }
}

fn bench_gate() {
    use tfdc::capability::{Ask, AuditLine, Capability, CapabilitySet, Gate, Subject, funcs};
    use tfdc::host::outward::Outward;
    let mut caps = CapabilitySet::new();
    for (cap, names) in [
        (Capability::Ssh, &["device", "control-host"][..]),
        (
            Capability::Power,
            &[
                "reboot_script",
                "poweroff_script",
                "poweron_script",
                "control_host_reboot_script",
            ][..],
        ),
        (Capability::Http, &["control-host", "job-urls"][..]),
    ] {
        caps.insert(cap, names.iter().map(|s| s.to_string()).collect());
    }
    let gate = Gate::new(Subject::default(), caps.clone(), caps, vec![], "bench");
    let n = 2_000_000u32;
    let name = |i: u32| {
        if i.is_multiple_of(2) {
            "reboot_script"
        } else {
            "poweron_script"
        }
    };
    let per_call = |start: Instant, n: u32| start.elapsed().as_nanos() as f64 / n as f64;

    let start = Instant::now();
    for i in 0..n {
        let ask = Ask::Name(Capability::Power, std::hint::black_box(name(i)));
        std::hint::black_box(gate.check(ask)).unwrap();
    }
    println!(
        "{:<34} {:>8.1} ns per allowed check",
        "capability gate",
        per_call(start, n)
    );

    // What every outward call did before the wrapper: the check, a clock
    // read on each side and one audit line (no subscriber listening, no
    // JSON file: the events are filtered out, as on an agent's stderr at
    // a level that drops them).
    let start = Instant::now();
    for i in 0..n {
        let key = std::hint::black_box(name(i));
        gate.check(Ask::Command(key)).unwrap();
        let t = Instant::now();
        gate.audit(&AuditLine {
            call: funcs::POWER_RUN.call,
            capability: Ask::Command(key).label(),
            target: key,
            result: "ok",
            duration: t.elapsed(),
            detail: None,
        });
    }
    println!(
        "{:<34} {:>8.1} ns per call",
        "check + audit line, by hand",
        per_call(start, n)
    );

    // The wrapper around a call that does nothing: check, deadline cap,
    // span, audit line, future plumbing.
    let limits = tfdc::limits::Limits::default();
    let outward = Outward::new(&gate, &limits);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let start = Instant::now();
    rt.block_on(async {
        for i in 0..n {
            let key = std::hint::black_box(name(i));
            outward
                .call(
                    &funcs::POWER_RUN,
                    &[Ask::Command(key)],
                    key,
                    Some(1000),
                    |d| async move {
                        std::hint::black_box(d);
                        Ok::<_, tfdc::power::PowerError>(())
                    },
                )
                .await
                .unwrap();
        }
    });
    println!(
        "{:<34} {:>8.1} ns per call (no-op body)",
        "host call wrapper",
        per_call(start, n)
    );
}

fn main() {
    let mut runs = 20usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--runs" {
            runs = args.next().and_then(|v| v.parse().ok()).unwrap_or(runs);
        }
    }
    println!("== whole process (median of {runs}; cold = empty compiled-code cache)");
    bench_process(
        runs,
        "fake_connector provision",
        &[
            "fake_connector",
            "provision",
            "-c",
            "default.yaml",
            "testflinger.json",
        ],
    );
    bench_process(
        runs,
        "fake_connector allocate (default)",
        &[
            "fake_connector",
            "allocate",
            "-c",
            "default.yaml",
            "testflinger.json",
        ],
    );
    bench_noprovision(runs);
    bench_python(runs.min(10));
    println!("== compile vs cached load, in-process");
    bench_compile(runs);
    println!("== host-call overhead");
    bench_gate();
    bench_exec(runs);
    let _ = PathBuf::new();
}
