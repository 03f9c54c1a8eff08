//! The deployment files in `deploy/` against the tools that judge them: the systemd
//! units pass `systemd-analyze verify` with no warning, their command lines parse
//! with the real CLI, the units keep their hardening, the container files run the
//! same commands, and the binary links only glibc's libraries. A test skips, saying
//! why, only when the tool it needs (`systemd-analyze`, `systemd-sysusers`, `ldd`,
//! `strace`) is not installed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The binary the units start (as /usr/local/bin/fedcrm once installed).
const BIN: &str = env!("CARGO_BIN_EXE_fedcrm");
/// Where the units and the container files expect the binary.
const INSTALLED_BIN: &str = "/usr/local/bin/fedcrm";
/// The node and the coordinator stop within this many seconds of SIGTERM.
const STOP_WITHIN_SECONDS: u64 = 10;

const UNITS: [&str; 2] = ["fedcrm-node.service", "fedcrm-coordinator.service"];
const CONTAINERFILES: [&str; 2] = ["Containerfile.node", "Containerfile.coordinator"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// `name` on PATH, or None (and the caller skips, saying so).
fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

fn skip(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
}

/// A unit file as (key, value) pairs per section, in order; repeated keys stay
/// repeated (systemd accumulates some, e.g. SystemCallFilter=).
fn unit_settings(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (k, v) = line.split_once('=').unwrap_or_else(|| panic!("not key=value: {line}"));
        out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
    }
    out
}

fn values<'a>(settings: &'a [(String, String, String)], key: &str) -> Vec<&'a str> {
    settings.iter().filter(|(s, k, _)| s == "Service" && k == key).map(|(_, _, v)| v.as_str()).collect()
}

fn one<'a>(settings: &'a [(String, String, String)], key: &str, unit: &str) -> &'a str {
    match values(settings, key).as_slice() {
        [v] => v,
        other => panic!("{unit}: expected one {key}=, found {other:?}"),
    }
}

/// Run `systemd-analyze verify` on `text` written as `file_name` in a fresh
/// directory. Err with everything it printed when it fails or warns about the unit.
fn analyze_verify(analyze: &Path, file_name: &str, text: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(file_name);
    std::fs::write(&path, text).unwrap();
    let out = Command::new(analyze).arg("verify").arg(&path).output().unwrap();
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // `verify` exits 0 on an unknown key or an unparsable value ("…, ignoring"), so a
    // clean exit is not enough: any line it prints fails, except lines about the
    // host's own units (it loads the targets ours name), which are this machine's
    // business and are only shown.
    let host_unit_dirs = ["/lib/systemd/", "/usr/lib/systemd/", "/etc/systemd/", "/run/systemd/"];
    let (host, ours): (Vec<&str>, Vec<&str>) =
        printed.lines().filter(|l| !l.trim().is_empty()).partition(|l| host_unit_dirs.iter().any(|d| l.starts_with(d)));
    if !host.is_empty() {
        eprintln!("systemd-analyze verify {file_name}: about the host's units, not ours:\n{}", host.join("\n"));
    }
    if out.status.success() && ours.is_empty() {
        Ok(())
    } else {
        Err(format!("systemd-analyze verify {file_name}: {}\n{}", out.status, ours.join("\n")))
    }
}

/// A unit as it would be installed on this machine, for `verify`. Only the binary's
/// path changes: `verify` checks that every Exec*= executable exists, and
/// /usr/local/bin/fedcrm is not installed where tests run. The user `fedcrm` is not
/// substituted: `verify` does not look users up (systemd 252; a unit naming a user
/// that does not exist fails at start, which README "Operations" prevents by
/// creating it first).
fn as_installed_here(unit: &str) -> String {
    let text = read(&format!("deploy/systemd/{unit}"));
    assert!(text.contains(INSTALLED_BIN), "{unit} does not start {INSTALLED_BIN}");
    text.replace(INSTALLED_BIN, BIN)
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let Some(analyze) = tool("systemd-analyze") else {
        return skip("systemd_units_pass_systemd_analyze_verify", "systemd-analyze is not installed");
    };
    for unit in UNITS {
        if let Err(e) = analyze_verify(&analyze, unit, &as_installed_here(unit)) {
            panic!("{e}");
        }
    }
}

/// The check above is not blind to what `verify` only warns about.
#[test]
fn a_misspelt_or_broken_directive_fails_the_verify_check() {
    let Some(analyze) = tool("systemd-analyze") else {
        return skip("a_misspelt_or_broken_directive_fails_the_verify_check", "systemd-analyze is not installed");
    };
    let good = as_installed_here("fedcrm-node.service");
    for (from, to) in [
        ("\nProtectSystem=strict\n", "\nProtectSytem=strict\n"),
        ("\nRestrictAddressFamilies=AF_INET ", "\nRestrictAddressFamilies=AF_INTE "),
        (&format!("\nExecStart={BIN} "), "\nExecStart=/nonexistent/fedcrm "),
    ] {
        assert_eq!(good.matches(from).count(), 1, "{from}");
        let err = analyze_verify(&analyze, "fedcrm-node.service", &good.replacen(from, to, 1))
            .expect_err(&format!("{from} -> {to} passed the check"));
        assert!(err.contains("fedcrm-node.service"), "{err}");
    }
}

#[test]
fn units_run_as_the_service_user_restart_and_keep_their_hardening() {
    for unit in UNITS {
        let text = read(&format!("deploy/systemd/{unit}"));
        let s = unit_settings(&text);
        for (key, want) in [
            ("User", "fedcrm"),
            ("Group", "fedcrm"),
            ("Restart", "always"),
            ("KillSignal", "SIGTERM"),
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("CapabilityBoundingSet", ""),
            ("AmbientCapabilities", ""),
            ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
            ("UMask", "0077"),
        ] {
            assert_eq!(one(&s, key, unit), want, "{unit}: {key}=");
        }
        assert!(
            values(&s, "SystemCallFilter").contains(&"@system-service"),
            "{unit}: SystemCallFilter=@system-service"
        );
        let restart_sec: u64 = one(&s, "RestartSec", unit).parse().unwrap();
        assert!(restart_sec > 0, "{unit}: RestartSec=0 would spin on a configuration error");
        let stop: u64 = one(&s, "TimeoutStopSec", unit).parse().unwrap();
        assert!(stop > STOP_WITHIN_SECONDS, "{unit}: TimeoutStopSec={stop} leaves no room for a clean stop");

        // The writable paths are exactly the state directory systemd creates, owned
        // by the service user: the audit log cannot be written anywhere else.
        let role = unit.trim_start_matches("fedcrm-").trim_end_matches(".service");
        assert_eq!(one(&s, "StateDirectory", unit), format!("fedcrm/{role}"), "{unit}");
        assert_eq!(one(&s, "ReadWritePaths", unit), format!("/var/lib/fedcrm/{role}"), "{unit}");

        let exec_start = one(&s, "ExecStart", unit);
        assert_eq!(exec_start, format!("{INSTALLED_BIN} {role} run --config /etc/fedcrm/{role}.toml"), "{unit}");
    }
    let coordinator = unit_settings(&read("deploy/systemd/fedcrm-coordinator.service"));
    assert_eq!(one(&coordinator, "ExecReload", "coordinator"), "/bin/kill -HUP $MAINPID");
}

/// A command line from a unit or a container file, as the installed binary would
/// get it, parses with the real CLI: `--help` after it succeeds (clap rejects an
/// unknown flag or subcommand before it reaches `--help`), and with a config that
/// does not exist it fails reading that file — not with a usage error (exit 2).
fn assert_parses_with_the_cli(origin: &str, args: &[&str]) {
    let help = Command::new(BIN).args(args).arg("--help").output().unwrap();
    assert!(
        help.status.success(),
        "{origin}: `fedcrm {} --help` failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&help.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let args: Vec<String> = args
        .iter()
        .map(|a| if a.starts_with("/etc/fedcrm/") { missing.display().to_string() } else { a.to_string() })
        .collect();
    assert!(args.iter().any(|a| *a == missing.display().to_string()), "{origin}: no config under /etc/fedcrm/");
    let run = Command::new(BIN).args(&args).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{origin}: `fedcrm {}`:\n{stderr}", args.join(" "));
    assert!(stderr.contains(&missing.display().to_string()), "{origin}: {stderr}");
}

#[test]
fn unit_command_lines_parse_with_the_real_cli() {
    for unit in UNITS {
        let s = unit_settings(&read(&format!("deploy/systemd/{unit}")));
        let exec_start = one(&s, "ExecStart", unit);
        let mut words = exec_start.split_whitespace();
        assert_eq!(words.next(), Some(INSTALLED_BIN), "{unit}");
        assert_parses_with_the_cli(unit, &words.collect::<Vec<_>>());
    }
}

/// The JSON-array argument of a Containerfile instruction (`CMD ["a", "b"]`).
fn exec_form(file: &str, text: &str, instruction: &str) -> Vec<String> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{instruction} ")))
        .unwrap_or_else(|| panic!("{file}: no {instruction}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{file}: {instruction} is not exec form: {e}"))
}

#[test]
fn container_files_run_the_units_commands_as_a_user_without_secrets() {
    let rust_version = read("Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"').to_string())
        .expect("rust-version in Cargo.toml");
    for (file, unit) in CONTAINERFILES.iter().zip(UNITS) {
        let text = read(&format!("deploy/container/{file}"));
        // The builder is the MSRV, so the image builds what CI checks.
        assert!(
            text.contains(&format!("FROM docker.io/library/rust:{rust_version}-bookworm AS build")),
            "{file}: builder is not rust:{rust_version}-bookworm"
        );
        assert!(text.contains("FROM docker.io/library/debian:bookworm-slim\n"), "{file}: runtime image");
        assert!(text.contains("\nUSER fedcrm:fedcrm\n"), "{file}: must run as the fedcrm user");
        assert!(text.contains("\nSTOPSIGNAL SIGTERM\n"), "{file}");
        assert!(text.contains("cargo build --release --locked"), "{file}");
        // Nothing but the built binary is copied into the runtime image.
        let copies: Vec<&str> = text.lines().filter(|l| l.starts_with("COPY ")).collect();
        assert_eq!(copies, ["COPY . .", "COPY --from=build /out/fedcrm /usr/local/bin/fedcrm"], "{file}");

        let entrypoint = exec_form(file, &text, "ENTRYPOINT");
        assert_eq!(entrypoint, [INSTALLED_BIN], "{file}");
        let cmd = exec_form(file, &text, "CMD");
        let s = unit_settings(&read(&format!("deploy/systemd/{unit}")));
        assert_eq!(
            format!("{} {}", entrypoint[0], cmd.join(" ")),
            one(&s, "ExecStart", unit),
            "{file} and {unit} run different commands"
        );
        assert_parses_with_the_cli(file, &cmd.iter().map(String::as_str).collect::<Vec<_>>());

        let volumes = exec_form(file, &text, "VOLUME");
        assert_eq!(volumes, ["/etc/fedcrm".to_string(), one(&s, "ReadWritePaths", unit).to_string()], "{file}");
    }
    // The build context is the repository: build output, keys and local state stay out.
    let ignore: BTreeSet<&str> = include_str!("../.dockerignore").lines().collect();
    for pattern in ["target/", ".git/", "**/*.key", "**/*.pem", "ca/", "var/"] {
        assert!(ignore.contains(pattern), ".dockerignore lacks {pattern}");
    }
}

#[test]
fn sysusers_file_creates_the_service_user() {
    let Some(sysusers) = tool("systemd-sysusers") else {
        return skip("sysusers_file_creates_the_service_user", "systemd-sysusers is not installed");
    };
    // An empty root: --dry-run then reports what it would create, and touches
    // nothing of this machine.
    let root = tempfile::tempdir().unwrap();
    let out = Command::new(sysusers)
        .arg(format!("--root={}", root.path().display()))
        .arg("--dry-run")
        .arg(repo().join("deploy/systemd/fedcrm.sysusers"))
        .output()
        .unwrap();
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{printed}");
    assert!(printed.contains("Creating group 'fedcrm'"), "{printed}");
    assert!(printed.contains("Creating user 'fedcrm'"), "{printed}");
    assert!(!printed.contains("ignoring"), "{printed}");
}

/// The shared libraries `ldd` lists, by file name.
fn linked_libraries(ldd: &Path, binary: &str) -> Vec<String> {
    let out = Command::new(ldd).arg(binary).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "ldd {binary}: {}{}", text, String::from_utf8_lossy(&out.stderr));
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|first| first.rsplit('/').next().unwrap().to_string())
        .collect()
}

#[test]
fn binary_links_only_glibc() {
    let Some(ldd) = tool("ldd") else {
        return skip("binary_links_only_glibc", "ldd is not installed");
    };
    // glibc's own libraries and the kernel's vDSO; libgcc_s is GCC's unwinder, which
    // glibc itself loads for thread cancellation, present wherever glibc is.
    let glibc = [
        "linux-vdso.so.",
        "libc.so.",
        "libm.so.",
        "libgcc_s.so.",
        "libpthread.so.",
        "libdl.so.",
        "librt.so.",
        "ld-linux-",
    ];
    let libraries = linked_libraries(&ldd, BIN);
    assert!(libraries.iter().any(|l| l.starts_with("libc.so.")), "ldd lists no libc: {libraries:?}");
    let foreign: Vec<&String> = libraries.iter().filter(|l| !glibc.iter().any(|g| l.starts_with(g))).collect();
    assert!(foreign.is_empty(), "{BIN} links more than glibc: {foreign:?} (all: {libraries:?})");
}

/// The ```toml block of README "Operations" that starts `# /etc/fedcrm/{role}.toml`.
fn readme_config_snippet(role: &str) -> toml::Table {
    let readme = read("README.md");
    let marker = format!("```toml\n# /etc/fedcrm/{role}.toml\n");
    let start = readme.find(&marker).unwrap_or_else(|| panic!("README has no {marker:?} block")) + marker.len();
    let block = &readme[start..start + readme[start..].find("```").unwrap()];
    block.parse().unwrap_or_else(|e| panic!("README's {role}.toml block: {e}"))
}

/// `overlay`'s keys replace `base`'s, table by table.
fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (k, v) in overlay {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// The default config with README's edits, written as /etc/fedcrm/{role}.toml would
/// be (in a temporary directory standing for /etc/fedcrm).
fn installed_config(role: &str, etc: &Path) -> PathBuf {
    let mut config: toml::Table = read(&format!("configs/{role}.toml")).parse().unwrap();
    merge(&mut config, readme_config_snippet(role));
    let path = etc.join(format!("{role}.toml"));
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    path
}

/// Following README "Operations", every path the service writes is inside the one
/// directory its unit lets it write, and what it reads is outside the hidden /home.
#[test]
fn readme_service_configs_write_only_where_the_units_allow() {
    let etc = tempfile::tempdir().unwrap();
    let writable = |unit: &str| {
        PathBuf::from(one(&unit_settings(&read(&format!("deploy/systemd/{unit}"))), "ReadWritePaths", unit))
    };

    let node = fedcrm_node::config::NodeConfig::load(&installed_config("node", etc.path())).unwrap();
    let allowed = writable("fedcrm-node.service");
    for (what, p) in [("audit_dir", &node.audit_dir), ("approvals_dir", &node.approvals_dir)] {
        assert!(p.starts_with(&allowed), "node {what} {} is outside ReadWritePaths={}", p.display(), allowed.display());
    }
    let mut reads = vec![&node.data.path, &node.tls.ca, &node.tls.cert, &node.tls.key];
    reads.extend(node.data.consent_withdrawals.as_ref());
    for p in reads {
        assert!(p.is_absolute() && !p.starts_with("/home") && !p.starts_with("/root"), "node reads {}", p.display());
    }

    let coordinator =
        fedcrm_coordinator::config::CoordinatorConfig::load(&installed_config("coordinator", etc.path())).unwrap();
    let allowed = writable("fedcrm-coordinator.service");
    assert!(
        coordinator.audit_dir.starts_with(&allowed),
        "coordinator audit_dir {} is outside ReadWritePaths={}",
        coordinator.audit_dir.display(),
        allowed.display()
    );
    // Certificates and key stay in /etc/fedcrm (here: the directory standing for it).
    for p in [&coordinator.tls.ca, &coordinator.tls.cert, &coordinator.tls.key] {
        assert_eq!(p.parent(), Some(etc.path()), "coordinator reads {}", p.display());
    }
}

/// The system calls in a `systemd-analyze syscall-filter` group, its subgroups expanded.
fn syscall_group(analyze: &Path, group: &str) -> BTreeSet<String> {
    let out = Command::new(analyze).args(["syscall-filter", group]).output().unwrap();
    assert!(out.status.success(), "systemd-analyze syscall-filter {group}: {}", String::from_utf8_lossy(&out.stderr));
    let mut calls = BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines().skip(1).map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('@') {
            calls.extend(syscall_group(analyze, line));
        } else {
            calls.insert(line.to_string());
        }
    }
    calls
}

/// The filter the units install (SystemCallFilter= lines, in order: the first is an
/// allow-list, `~` lines take calls out of it), as the set of allowed calls.
fn units_syscall_filter(analyze: &Path, unit: &str) -> BTreeSet<String> {
    let s = unit_settings(&read(&format!("deploy/systemd/{unit}")));
    let mut allowed = BTreeSet::new();
    for (i, line) in values(&s, "SystemCallFilter").into_iter().enumerate() {
        let (deny, items) = match line.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        assert!(deny || i == 0, "{unit}: an allow-list after the first SystemCallFilter= line: {line}");
        for item in items.split_whitespace() {
            let calls =
                if item.starts_with('@') { syscall_group(analyze, item) } else { BTreeSet::from([item.to_string()]) };
            if deny {
                allowed.retain(|c| !calls.contains(c));
            } else {
                allowed.extend(calls);
            }
        }
    }
    allowed
}

/// Every system call a whole deployment makes — the demo runs a CA, the coordinator
/// and seven nodes over mutual TLS with audit logs, in one process — is allowed by
/// the units' SystemCallFilter=, so the filter will not fail a call in service.
/// (Signal handling for SIGTERM/SIGHUP adds rt_sigaction and a socketpair, both in
/// @system-service.)
#[test]
fn a_demo_run_makes_only_system_calls_the_units_allow() {
    let test = "a_demo_run_makes_only_system_calls_the_units_allow";
    let (Some(analyze), Some(strace)) = (tool("systemd-analyze"), tool("strace")) else {
        return skip(test, "systemd-analyze or strace is not installed");
    };
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    let out = Command::new(strace)
        .args(["-f", "-qq", "-o"])
        .arg(&trace)
        .args([BIN, "demo", "--quiet"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("Operation not permitted") && stderr.contains("ptrace") {
        return skip(test, &format!("strace cannot trace here: {}", stderr.trim()));
    }
    assert!(out.status.success(), "fedcrm demo under strace: {}\n{stderr}", out.status);

    let trace = std::fs::read_to_string(&trace).unwrap();
    let mut made = BTreeSet::new();
    for line in trace.lines() {
        // MemoryDenyWriteExecute=yes refuses a mapping both writable and executable,
        // and making any existing mapping executable (systemd.exec(5)).
        assert!(!(line.contains("PROT_WRITE") && line.contains("PROT_EXEC")), "writable and executable: {line}");
        assert!(!(line.contains("mprotect(") && line.contains("PROT_EXEC")), "made executable: {line}");
        // RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX.
        if let Some(args) = line.split_once("socket(").map(|(_, a)| a) {
            let family = args.split(',').next().unwrap_or_default();
            assert!(["AF_INET", "AF_INET6", "AF_UNIX"].contains(&family), "a socket of family {family}: {line}");
        }
        // "PID name(args…" or "PID <... name resumed>…"; signals and exits start with "---"/"+++".
        let rest = line.split_once(' ').map_or("", |(_, r)| r.trim_start());
        let rest = rest.strip_prefix("<... ").unwrap_or(rest);
        let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !name.is_empty() {
            made.insert(name);
        }
    }
    assert!(made.contains("fdatasync") && made.contains("accept4"), "the trace missed the demo's work: {made:?}");
    for unit in UNITS {
        let allowed = units_syscall_filter(&analyze, unit);
        let denied: Vec<&String> = made.iter().filter(|c| !allowed.contains(*c)).collect();
        assert!(denied.is_empty(), "{unit}'s SystemCallFilter= would refuse {denied:?}");
    }
}
