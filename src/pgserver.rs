//! Issue 14: a throwaway PostgreSQL server for tests and the database bench — a fresh
//! cluster (`initdb`) in a temporary directory, listening on a free loopback port, run
//! as an unprivileged user when the caller is root (PostgreSQL refuses to run as root;
//! CI runs as root), stopped and removed when dropped. Nothing depends on a server
//! configured by hand: the server binaries come from Debian's `postgresql` package,
//! which `.ci/run` installs if absent (or from `FEDCRM_PG_BIN`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fedcrm_node::data::{DataConfig, Format};

/// The unprivileged user (uid, gid) the server runs as when the caller is root:
/// Debian's `nobody` / `nogroup`.
const NOBODY: (u32, u32) = (65_534, 65_534);

/// A running throwaway server.
#[derive(Debug)]
pub struct PgServer {
    dir: tempfile::TempDir,
    child: Option<Child>,
    bin: PathBuf,
    pub port: u16,
    /// The superuser's password (scram over TCP; nothing else can log in).
    admin_password: String,
    run_as: Option<(u32, u32)>,
}

/// The directory holding `initdb`, `postgres` and `pg_ctl`.
fn server_bin() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("FEDCRM_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Ok(bin);
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        if dir.join("initdb").exists() && dir.join("postgres").exists() {
            return Ok(dir);
        }
    }
    bail!(
        "no PostgreSQL server binaries (initdb, postgres) in /usr/lib/postgresql/*/bin or on PATH: install Debian's \
         postgresql package (apt-get install postgresql; .ci/run does), or set FEDCRM_PG_BIN to their directory"
    )
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl PgServer {
    /// Create and start a server; blocks until it accepts connections (at most 60 s).
    pub fn start() -> Result<Self> {
        use std::os::unix::process::CommandExt;
        let bin = server_bin()?;
        let dir = tempfile::Builder::new().prefix("fedcrm-pg.").tempdir()?;
        let run_as = is_root().then_some(NOBODY);
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .with_context(|| format!("giving {} to the unprivileged user", dir.path().display()))?;
        }
        let admin_password = hex::encode(ring_random_bytes()?);
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, format!("{admin_password}\n"))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid))?;
        }
        let command = |name: &str| {
            let mut c = Command::new(bin.join(name));
            c.env("LC_ALL", "C").env("LANG", "C").current_dir(dir.path());
            if let Some((uid, gid)) = run_as {
                c.uid(uid).gid(gid);
            }
            c
        };
        let data = dir.path().join("data");
        let out = command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8"])
            .args(["--locale=C", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .with_context(|| format!("running {}", bin.join("initdb").display()))?;
        if !out.status.success() {
            bail!("initdb failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        std::fs::remove_file(&pwfile)?;
        let port = free_port()?;
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path().join("server.log"), Some(uid), Some(gid))?;
        }
        let child = command("postgres")
            .arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(port.to_string())
            .args(["-c", "listen_addresses=127.0.0.1", "-c"])
            .arg(format!("unix_socket_directories={}", dir.path().display()))
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            .args(["-c", "timezone=UTC", "-c", "max_connections=100"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.join("postgres").display()))?;
        let server = PgServer { dir, child: Some(child), bin, port, admin_password, run_as };
        server.wait_ready(&data)?;
        Ok(server)
    }

    fn wait_ready(&self, data: &Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // The postmaster writes "ready" on the status line of its pid file.
            if std::fs::read_to_string(data.join("postmaster.pid"))
                .is_ok_and(|s| s.lines().any(|l| l.trim() == "ready"))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the PostgreSQL server did not start within 60 s; its log: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// A connection as the superuser to `db`.
    pub async fn admin(&self, db: &str) -> Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .password(&self.admin_password)
            .dbname(db)
            .connect(tokio_postgres::NoTls)
            .await
            .context("connecting to the throwaway server as its superuser")?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// Create database `db` with a table `sales` (from `table_sql`, run in it) and a
    /// role `role` with `password` that may connect and only SELECT from it; the role's
    /// password is written to `dir/<role>.password` (mode 0600). Returns the node's
    /// `[data]` for the table, TLS off (loopback), defaults otherwise.
    pub async fn node_database(
        &self,
        db: &str,
        role: &str,
        table_sql: &str,
        dir: &Path,
    ) -> Result<(tokio_postgres::Client, DataConfig)> {
        let admin = self.admin("postgres").await?;
        let password = hex::encode(ring_random_bytes()?);
        // CREATE DATABASE runs alone (not in the implicit transaction of a batch).
        admin.batch_execute(&format!("CREATE DATABASE {db}")).await?;
        admin
            .batch_execute(&format!(
                "CREATE ROLE {role} LOGIN PASSWORD '{password}'; \
                 REVOKE ALL ON DATABASE {db} FROM PUBLIC; GRANT CONNECT ON DATABASE {db} TO {role};"
            ))
            .await?;
        let client = self.admin(db).await?;
        client.batch_execute(table_sql).await?;
        client.batch_execute(&format!("GRANT SELECT ON sales TO {role};")).await?;
        let file = dir.join(format!("{role}.password"));
        write_secret(&file, &password)?;
        let mut data = DataConfig::new(Format::Postgres, PathBuf::new());
        data.url = Some(format!("postgres://{role}@127.0.0.1:{}/{db}", self.port));
        data.password_file = Some(file);
        data.sslmode = Some(fedcrm_node::data::postgres::SslMode::Disable);
        data.table = Some("sales".into());
        Ok((client, data))
    }

    /// Stop the server (fast shutdown) and wait for it.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let mut c = Command::new(self.bin.join("pg_ctl"));
        c.arg("-D").arg(self.dir.path().join("data")).args(["stop", "-m", "fast", "-w", "-t", "20"]);
        c.stdout(Stdio::null()).stderr(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            use std::os::unix::process::CommandExt;
            c.uid(uid).gid(gid);
        }
        if !c.status().is_ok_and(|s| s.success()) {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn ring_random_bytes() -> Result<[u8; 16]> {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| anyhow::anyhow!("no system randomness"))?;
    Ok(b)
}

/// Write a secret file readable by its owner only (0600 from creation).
pub fn write_secret(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
