//! TLS against a real nats-server, with certificates made by the `openssl` CLI per test.

use res_nats::{Client, Event, Options};
use res_testkit::NatsServer;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// A throwaway CA with a server certificate for 127.0.0.1 and a client certificate.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
        std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        openssl(
            d,
            &[
                &["req", "-x509"],
                &ec[..],
                &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=res-nats test CA"],
            ]
            .concat(),
        );
        for name in ["server", "client"] {
            let (key, csr, pem, ext) =
                (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
            openssl(
                d,
                &[&["req"], &ec[..], &["-keyout", &key, "-out", &csr, "-subj", &format!("/CN={name}")]].concat(),
            );
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &pem,
                    "-days",
                    "2",
                    "-extfile",
                    &ext,
                ],
            );
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn server(&self, extra: &[&str]) -> NatsServer {
        let (cert, key, ca) = (self.path("server.pem"), self.path("server.key"), self.path("ca.pem"));
        let mut args = vec!["--tlscert", cert.to_str().unwrap(), "--tlskey", key.to_str().unwrap()];
        args.extend_from_slice(extra);
        let ca = ca.to_str().unwrap().to_owned();
        if extra.contains(&"--tlsverify") {
            args.extend(["--tlscacert", &ca]);
            NatsServer::start_with(&args)
        } else {
            args.push("--tls");
            NatsServer::start_with(&args)
        }
    }

    fn options(&self, url: String) -> Options {
        let mut opts = Options::new(url);
        opts.root_cas = vec![self.path("ca.pem")];
        opts
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run openssl (install the Debian package `openssl`): {e}"));
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

async fn round_trip(client: &Client) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _sub = client.subscribe("secure", std::sync::Arc::new(move |m| drop(tx.send(m)))).unwrap();
    client.publish("secure", None, None, bytes::Bytes::from_static(b"hi")).unwrap();
    let m = tokio::time::timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    assert_eq!(&m.payload[..], b"hi");
}

async fn connect(opts: Options) -> Client {
    let (client, mut events) =
        tokio::time::timeout(WAIT, Client::connect(opts)).await.expect("connect in time").unwrap();
    assert_eq!(events.recv().await.unwrap(), Event::Connected);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_over_tls_with_a_configured_ca() {
    let pki = tokio::task::block_in_place(Pki::new);
    let server = pki.server(&[]);
    // tls:// asks for TLS; a nats:// URL upgrades because the server's INFO requires it.
    for url in [format!("tls://127.0.0.1:{}", server.port()), server.url()] {
        round_trip(&connect(pki.options(url)).await).await;
    }
    // Without the CA the server's certificate is not trusted: no connection, only retries.
    let untrusted = Options::new(server.url());
    assert!(tokio::time::timeout(Duration::from_millis(500), Client::connect(untrusted)).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presents_a_client_certificate_when_the_server_verifies_clients() {
    let pki = tokio::task::block_in_place(Pki::new);
    let server = pki.server(&["--tlsverify"]);
    let mut opts = pki.options(server.url());
    opts.client_cert = Some((pki.path("client.pem"), pki.path("client.key")));
    round_trip(&connect(opts).await).await;
    // Without one the server refuses the handshake.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), Client::connect(pki.options(server.url()))).await.is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_files_fail_connect_at_once() {
    let pki = tokio::task::block_in_place(Pki::new);
    let mut opts = Options::new("nats://127.0.0.1:1");
    opts.root_cas = vec![pki.path("missing.pem")];
    assert!(matches!(Client::connect(opts).await, Err(res_nats::ConnectError::Read { .. })));
    let mut opts = Options::new("nats://127.0.0.1:1");
    opts.root_cas = vec![pki.path("server.ext")];
    assert!(matches!(Client::connect(opts).await, Err(res_nats::ConnectError::Tls(_))));
    let mut opts = Options::new("nats://127.0.0.1:1");
    opts.client_cert = Some((pki.path("client.pem"), pki.path("ca.pem")));
    assert!(matches!(Client::connect(opts).await, Err(res_nats::ConnectError::Tls(_))));
}
