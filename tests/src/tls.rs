//! TLS test support: certificates generated per test with the `openssl` command-line tool, and a
//! TLS-only `redis-server` (`--port 0 --tls-port <free port>`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A certificate authority with a server certificate (SAN `IP:127.0.0.1`, `DNS:localhost`) and a
/// client certificate, all PEM files in one temporary directory. Every call makes a new CA, so
/// the CA of one `TlsFiles` does not verify the certificates of another.
#[derive(Debug)]
pub struct TlsFiles {
    dir: TempDir,
}

impl TlsFiles {
    /// Generates a CA, a server certificate and a client certificate (EC P-256, valid one day).
    ///
    /// # Panics
    ///
    /// When `openssl` is missing or fails (its output is in the message).
    pub fn generate() -> TlsFiles {
        let dir = tempfile::Builder::new()
            .prefix("eventbus-tls-")
            .tempdir()
            .expect("create temp dir");
        let files = TlsFiles { dir };
        let d = files.dir.path();
        // A distinct CA name per call: a client trusting another call's CA then reports an
        // unknown issuer, as with any foreign CA, rather than a bad signature.
        static N: AtomicU32 = AtomicU32::new(0);
        let ca_subject = format!(
            "/CN=eventbus test CA {}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        openssl(
            d,
            &[
                &["req", "-x509", "-nodes", "-days", "1"][..],
                &ec,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.crt",
                    "-subj",
                    &ca_subject,
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            ]
            .concat(),
        );
        for (name, cn, usage) in [
            ("server", "localhost", "serverAuth"),
            ("client", "eventbus test client", "clientAuth"),
        ] {
            let ext = format!(
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\n"
            );
            std::fs::write(d.join(format!("{name}.ext")), ext).expect("write extensions");
            let key = format!("{name}.key");
            let csr = format!("{name}.csr");
            let crt = format!("{name}.crt");
            let extfile = format!("{name}.ext");
            let subj = format!("/CN={cn}");
            openssl(
                d,
                &[
                    &["req", "-new", "-nodes"][..],
                    &ec,
                    &["-keyout", &key, "-out", &csr, "-subj", &subj],
                ]
                .concat(),
            );
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "1",
                    "-out",
                    &crt,
                    "-extfile",
                    &extfile,
                ],
            );
        }
        files
    }

    /// The CA certificate (PEM).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// The server certificate (PEM).
    pub fn server_cert(&self) -> PathBuf {
        self.dir.path().join("server.crt")
    }

    /// The server's private key (PEM).
    pub fn server_key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    /// The client certificate (PEM), for servers that require one.
    pub fn client_cert(&self) -> PathBuf {
        self.dir.path().join("client.crt")
    }

    /// The client's private key (PEM).
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client.key")
    }

    /// A redis-rs client for `url` that trusts this CA and presents this client certificate.
    ///
    /// # Panics
    ///
    /// When the files cannot be read or the URL is invalid.
    pub fn client(&self, url: &str) -> redis::Client {
        let read = |p: PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("read {p:?}: {e}"));
        redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: Some(redis::ClientTlsConfig {
                    client_cert: read(self.client_cert()),
                    client_key: read(self.client_key()),
                }),
                root_cert: Some(read(self.ca_cert())),
            },
        )
        .expect("TLS client")
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run openssl ({e}); install it (apt-get install openssl)")
        });
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TLS-only `redis-server` owned by one test (no plain-text port), killed on drop.
#[derive(Debug)]
pub struct TlsRedisServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    client: redis::Client,
}

impl TlsRedisServer {
    /// Starts a TLS-only server with the certificates of `files`. With `require_client_cert`,
    /// clients must present a certificate signed by that CA (`--tls-auth-clients yes`).
    ///
    /// # Panics
    ///
    /// When `redis-server` lacks TLS support or does not come up (the log is in the message).
    pub fn start(files: &TlsFiles, require_client_cert: bool) -> TlsRedisServer {
        let mut dir = tempfile::Builder::new()
            .prefix("eventbus-redis-tls-")
            .tempdir()
            .expect("create temp dir");
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = crate::server::free_port();
            let log = dir.path().join("redis.log");
            let child = Command::new("redis-server")
                .args(["--port", "0", "--bind", "127.0.0.1"])
                .arg("--tls-port")
                .arg(port.to_string())
                .arg("--tls-cert-file")
                .arg(files.server_cert())
                .arg("--tls-key-file")
                .arg(files.server_key())
                .arg("--tls-ca-cert-file")
                .arg(files.ca_cert())
                .arg("--tls-auth-clients")
                .arg(if require_client_cert { "yes" } else { "no" })
                .arg("--dir")
                .arg(dir.path())
                .arg("--logfile")
                .arg(&log)
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("run redis-server");
            let client = files.client(&format!("rediss://127.0.0.1:{port}"));
            let mut server = TlsRedisServer {
                child: Some(child),
                port,
                dir,
                client,
            };
            match server.wait_ready() {
                Ok(()) => return server,
                Err(e) => {
                    last_error = e;
                    server.kill();
                    dir = std::mem::replace(&mut server.dir, tempfile::tempdir().expect("temp"));
                }
            }
        }
        panic!("TLS redis-server did not start: {last_error}");
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!(
                    "redis-server exited with {status}; log:\n{}",
                    self.log()
                ));
            }
            let last = match self
                .client
                .get_connection_with_timeout(Duration::from_millis(500))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            {
                Ok(_) => return Ok(()),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                return Err(format!(
                    "no TLS PING answer within 10s (last error: {last}); log:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20)); // ok: polling for readiness with a deadline
        }
    }

    /// The TLS port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `rediss://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// A TLS connection trusting the server's CA (default timeouts; not for blocking commands).
    ///
    /// # Panics
    ///
    /// When the server does not accept the connection.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        self.client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to TLS test redis")
    }

    /// Kills the server with SIGKILL and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TlsRedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
