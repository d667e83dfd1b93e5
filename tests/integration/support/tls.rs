//! Test PKI generated with rcgen, and a blocking rustls peer that speaks
//! just enough SIP to answer and to send a request back.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::scratch::Scratch;

/// Certificates written to a scratch directory.
pub struct TestPki {
    _dir: Scratch,
    /// The CA that signs `cert`.
    pub ca: PathBuf,
    /// A leaf for 127.0.0.1 and localhost, signed by `ca`.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// A CA that signed nothing here.
    pub other_ca: PathBuf,
    /// A self-signed leaf for 127.0.0.1 (what a PBX ships).
    pub self_signed: PathBuf,
    /// Its key.
    pub self_signed_key: PathBuf,
    /// SHA-256 fingerprint of `self_signed`, `AB:CD:..`.
    pub self_signed_fingerprint: String,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
        .expect("CA certificate")
}

fn names() -> Vec<String> {
    vec!["127.0.0.1".to_owned(), "localhost".to_owned()]
}

impl TestPki {
    /// Generates everything.
    pub fn generate() -> Self {
        let dir = Scratch::new("pki");
        let root = ca("dialerd test CA");
        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf = CertificateParams::new(names())
            .expect("leaf params")
            .signed_by(&leaf_key, &root)
            .expect("leaf certificate");
        let other = ca("unrelated CA");
        let self_key = KeyPair::generate().expect("self-signed key");
        let self_cert = CertificateParams::new(names())
            .expect("params")
            .self_signed(&self_key)
            .expect("self-signed certificate");
        let fp = dialerd::sip::transport::tls::hex_colon(
            &dialerd::sip::transport::tls::fingerprint(self_cert.der()),
        );
        Self {
            ca: dir.write("ca.pem", &root.pem()),
            cert: dir.write("cert.pem", &leaf.pem()),
            key: dir.write("key.pem", &leaf_key.serialize_pem()),
            other_ca: dir.write("other-ca.pem", &other.pem()),
            self_signed: dir.write("self.pem", &self_cert.pem()),
            self_signed_key: dir.write("self-key.pem", &self_key.serialize_pem()),
            self_signed_fingerprint: fp,
            _dir: dir,
        }
    }

    /// A rustls server configuration presenting `cert` (or `self_signed`).
    pub fn server_config(&self, self_signed: bool) -> Arc<rustls::ServerConfig> {
        let (cert, key) = if self_signed {
            (&self.self_signed, &self.self_signed_key)
        } else {
            (&self.cert, &self.key)
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .expect("read cert")
            .collect::<Result<_, _>>()
            .expect("parse cert");
        let key = PrivateKeyDer::from_pem_file(key).expect("read key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
        Arc::new(config)
    }

    /// A rustls client configuration trusting `ca`.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&self.ca).expect("read CA") {
            roots.add(cert.expect("parse CA")).expect("add CA");
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        Arc::new(config)
    }
}

/// Reads one SIP message (header section plus Content-Length body).
pub fn read_message(stream: &mut impl Read) -> std::io::Result<String> {
    let mut data = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = stream.read(&mut byte)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        data.push(byte[0]);
        if data == b"\r\n\r\n" {
            data.clear();
            continue;
        }
        if data.ends_with(b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&data).into_owned();
    let length = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            let n = n.trim().to_ascii_lowercase();
            (n == "content-length" || n == "l").then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body)?;
    Ok(head + &String::from_utf8_lossy(&body))
}

/// A 200 OK for `request`, copying Via, From, To (plus a tag), Call-ID, CSeq.
pub fn ok_for(request: &str) -> String {
    let mut out = String::from("SIP/2.0 200 OK\r\n");
    for line in request.lines() {
        let name = line
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match name.as_str() {
            "via" | "v" | "from" | "f" | "call-id" | "i" | "cseq" => {
                out.push_str(line);
                out.push_str("\r\n");
            }
            "to" | "t" => {
                out.push_str(line);
                out.push_str(";tag=peer1\r\n");
            }
            _ => {}
        }
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

/// An OPTIONS from the peer to dialerd.
pub fn options_from_peer(local: SocketAddr, proto: &str) -> String {
    format!(
        "OPTIONS sip:dialerd@{local} SIP/2.0\r\nVia: SIP/2.0/{proto} {local};branch=z9hG4bKpeer1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:peer@{local}>;tag=p1\r\nTo: <sip:dialerd@{local}>\r\n\
         Call-ID: peer-call-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

/// What the peer does after accepting one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerPlan {
    /// Answer one request with 200 and close.
    Answer,
    /// Answer, then send a request back over the same connection and read the answer.
    AnswerThenRequest,
}

/// What the peer saw.
#[derive(Debug, Default)]
pub struct PeerReport {
    /// The request it received.
    pub request: Option<String>,
    /// The answer to its own request, for [`PeerPlan::AnswerThenRequest`].
    pub answer: Option<String>,
    /// The first error, if any (a failed handshake shows here).
    pub error: Option<String>,
}

/// A TLS server peer (blocking rustls) accepting one connection.
pub struct TlsPeer {
    addr: SocketAddr,
    thread: Option<JoinHandle<PeerReport>>,
}

impl TlsPeer {
    /// Listens on a free loopback port.
    pub fn start(config: Arc<rustls::ServerConfig>, plan: PeerPlan) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind peer");
        let addr = listener.local_addr().expect("peer address");
        listener.set_nonblocking(true).expect("nonblocking");
        let thread = std::thread::spawn(move || {
            let mut report = PeerReport::default();
            let end = Instant::now() + Duration::from_secs(15);
            let tcp = loop {
                match listener.accept() {
                    Ok((s, _)) => break s,
                    Err(_) if Instant::now() < end => std::thread::sleep(Duration::from_millis(10)),
                    Err(e) => {
                        report.error = Some(format!("no connection: {e}"));
                        return report;
                    }
                }
            };
            let _ = tcp.set_nonblocking(false);
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
            let conn = match rustls::ServerConnection::new(config) {
                Ok(c) => c,
                Err(e) => {
                    report.error = Some(e.to_string());
                    return report;
                }
            };
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            if let Err(e) = serve(&mut tls, plan, addr, &mut report) {
                report.error.get_or_insert(e.to_string());
            }
            report
        });
        Self {
            addr,
            thread: Some(thread),
        }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits for the peer to finish.
    pub fn finish(mut self) -> PeerReport {
        self.thread
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

fn serve(
    tls: &mut rustls::StreamOwned<rustls::ServerConnection, TcpStream>,
    plan: PeerPlan,
    addr: SocketAddr,
    report: &mut PeerReport,
) -> std::io::Result<()> {
    let request = read_message(tls)?;
    tls.write_all(ok_for(&request).as_bytes())?;
    tls.flush()?;
    report.request = Some(request);
    if plan == PeerPlan::AnswerThenRequest {
        tls.write_all(options_from_peer(addr, "TLS").as_bytes())?;
        tls.flush()?;
        report.answer = Some(read_message(tls)?);
    }
    Ok(())
}

/// Connects to dialerd over TLS trusting `config`, sends an OPTIONS and
/// returns the answer.
pub fn tls_options(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> std::io::Result<String> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let name = ServerName::try_from("127.0.0.1").map_err(std::io::Error::other)?;
    let conn = rustls::ClientConnection::new(config, name).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let local = tls.sock.local_addr()?;
    tls.write_all(options_from_peer(local, "TLS").as_bytes())?;
    tls.flush()?;
    read_message(&mut tls)
}

/// What a [`TlsRegistrar`] saw.
#[derive(Debug, Default)]
pub struct RegistrarLog {
    /// Each REGISTER: when, on which connection (0, 1, ...), and the text.
    pub registers: Vec<(Instant, usize, String)>,
    /// When the registrar closed connection 0.
    pub closed_first: Option<Instant>,
    /// Handshake or I/O errors, by connection.
    pub errors: Vec<String>,
    /// The far end (dialerd's local address) of each connection, in order.
    pub peers: Vec<SocketAddr>,
}

/// A registrar over TLS (blocking rustls): answers every REGISTER with 200
/// and the Contact with expires=60; optionally closes the first connection
/// a moment after its first answer. Serves up to three connections in 15 s.
pub struct TlsRegistrar {
    addr: SocketAddr,
    log: Arc<std::sync::Mutex<RegistrarLog>>,
    thread: Option<JoinHandle<()>>,
}

impl TlsRegistrar {
    /// Starts listening on a free loopback port.
    pub fn start(config: Arc<rustls::ServerConfig>, close_first_after: Option<Duration>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind registrar");
        let addr = listener.local_addr().expect("registrar address");
        listener.set_nonblocking(true).expect("nonblocking");
        let log = Arc::new(std::sync::Mutex::new(RegistrarLog::default()));
        let shared = log.clone();
        let thread = std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(15);
            let mut index = 0;
            let mut workers = Vec::new();
            while index < 3 && Instant::now() < end {
                let Ok((tcp, peer)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                shared
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .peers
                    .push(peer);
                let (config, log) = (config.clone(), shared.clone());
                let close = if index == 0 { close_first_after } else { None };
                let conn = index;
                workers.push(std::thread::spawn(move || {
                    serve_registrar(tcp, config, conn, close, &log)
                }));
                index += 1;
            }
            for w in workers {
                let _ = w.join();
            }
        });
        Self {
            addr,
            log,
            thread: Some(thread),
        }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Runs `f` on the log so far.
    pub fn with_log<T>(&self, f: impl FnOnce(&RegistrarLog) -> T) -> T {
        f(&self.log.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for TlsRegistrar {
    fn drop(&mut self) {
        // The serving threads end by their own timeouts; do not wait here.
        drop(self.thread.take());
    }
}

fn serve_registrar(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    conn: usize,
    close_after: Option<Duration>,
    log: &std::sync::Mutex<RegistrarLog>,
) {
    let record = |f: &mut dyn FnMut(&mut RegistrarLog)| {
        f(&mut log.lock().unwrap_or_else(|e| e.into_inner()))
    };
    let _ = tcp.set_nonblocking(false);
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(12)));
    let Ok(server) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(server, tcp);
    loop {
        let request = match read_message(&mut tls) {
            Ok(r) => r,
            Err(e) => {
                record(&mut |l| l.errors.push(format!("connection {conn}: {e}")));
                return;
            }
        };
        let now = Instant::now();
        record(&mut |l| l.registers.push((now, conn, request.clone())));
        let contact = request
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("contact:"))
            .unwrap_or("Contact: <sip:unknown@127.0.0.1>")
            .to_owned();
        let mut answer = ok_for(&request);
        answer.insert_str(
            answer.len() - "Content-Length: 0\r\n\r\n".len(),
            &format!("{contact};expires=60\r\n"),
        );
        if tls
            .write_all(answer.as_bytes())
            .and_then(|()| tls.flush())
            .is_err()
        {
            return;
        }
        if let Some(wait) = close_after {
            std::thread::sleep(wait);
            tls.conn.send_close_notify();
            let _ = tls.flush();
            let _ = tls.sock.shutdown(std::net::Shutdown::Both);
            let at = Instant::now();
            record(&mut |l| l.closed_first = Some(at));
            return;
        }
    }
}
