//! A real `redis-server` on a free loopback port (plain, or TLS-only with
//! ACL users), and a small RESP client (plain TCP or rustls) that is
//! independent of the code under test.

use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

use super::ports::free_tcp_port;
use super::scratch::Scratch;
use super::tls::TestPki;
use super::{require_program, wait_for};

/// How many ports to try when the one picked is taken in the meantime.
const START_ATTEMPTS: u32 = 5;

/// The ACL user dialerd connects as on a [`RedisServer::start_secure`]
/// server: keys and channels under `dialer:` only.
pub const ACL_USER: &str = "dialer";
/// Its password.
pub const ACL_PASSWORD: &str = "tls-acl-pw-5150";
/// The ACL user of the test's own clients (everything allowed).
const ADMIN_USER: &str = "admin";
const ADMIN_PASSWORD: &str = "admin-pw-8086";

/// TLS material and ACL users of a secure server: TLS only (no plain
/// port), a certificate for 127.0.0.1 signed by a test CA, the `default`
/// user disabled.
pub struct Secure {
    pki: TestPki,
}

impl fmt::Debug for Secure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secure")
            .field("ca", &self.pki.ca)
            .field("user", &ACL_USER)
            .finish_non_exhaustive()
    }
}

impl Secure {
    /// The PEM file of the CA that signed the server's certificate.
    pub fn ca_file(&self) -> &Path {
        &self.pki.ca
    }

    /// A CA that signed nothing the server presents.
    pub fn other_ca_file(&self) -> &Path {
        &self.pki.other_ca
    }

    /// redis-server arguments: TLS on the port (`--tls-port` is added by
    /// the caller), and the users.
    fn args(&self) -> Vec<String> {
        let path = |p: &Path| p.display().to_string();
        let dialer = format!(">{ACL_PASSWORD}");
        let admin = format!(">{ADMIN_PASSWORD}");
        let mut args = vec![
            "--tls-cert-file".to_owned(),
            path(&self.pki.cert),
            "--tls-key-file".to_owned(),
            path(&self.pki.key),
            "--tls-ca-cert-file".to_owned(),
            path(&self.pki.ca),
        ];
        let rest: [&[&str]; 4] = [
            &["--tls-auth-clients", "no"],
            &["--user", "default", "off"],
            &[
                "--user",
                ACL_USER,
                "on",
                &dialer,
                "~dialer:*",
                "&dialer:*",
                "+@all",
            ],
            &["--user", ADMIN_USER, "on", &admin, "~*", "&*", "+@all"],
        ];
        args.extend(rest.iter().flat_map(|a| a.iter().map(|s| (*s).to_owned())));
        args
    }
}

/// A redis-server process, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    port: u16,
    dir: Scratch,
    secure: Option<Arc<Secure>>,
}

impl RedisServer {
    /// Starts redis-server with persistence off; `extra` are more
    /// `--name value` arguments (e.g. `["--timeout", "2"]`).
    pub fn start(extra: &[&str]) -> Self {
        Self::start_with(None, extra)
    }

    /// Starts a TLS-only redis-server (see [`Secure`]) with the ACL user
    /// [`ACL_USER`] / [`ACL_PASSWORD`]; [`RedisServer::client`] speaks TLS
    /// and authenticates as an admin user.
    pub fn start_secure(extra: &[&str]) -> Self {
        let secure = Secure {
            pki: TestPki::generate(),
        };
        Self::start_with(Some(Arc::new(secure)), extra)
    }

    fn start_with(secure: Option<Arc<Secure>>, extra: &[&str]) -> Self {
        require_program("redis-server", "redis-server");
        let mut last_log = String::new();
        for _ in 0..START_ATTEMPTS {
            let dir = Scratch::new("redis");
            let port = free_tcp_port();
            match Self::spawn(dir, port, secure.clone(), extra) {
                Ok(server) => return server,
                Err(log) => last_log = log,
            }
        }
        panic!("redis-server did not start after {START_ATTEMPTS} attempts; last log:\n{last_log}");
    }

    fn spawn(
        dir: Scratch,
        port: u16,
        secure: Option<Arc<Secure>>,
        extra: &[&str],
    ) -> Result<Self, String> {
        let log = dir.path().join("redis.log");
        let port_arg = port.to_string();
        let listen = match &secure {
            Some(_) => vec!["--port", "0", "--tls-port", &port_arg],
            None => vec!["--port", &port_arg],
        };
        let child = Command::new("redis-server")
            .args(listen)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(secure.iter().flat_map(|s| s.args()))
            .arg("--dir")
            .arg(dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn redis-server: {e}"))?;
        let mut server = Self {
            child,
            port,
            dir,
            secure,
        };
        let up = wait_for(Duration::from_secs(10), || {
            if let Ok(Some(_)) = server.child.try_wait() {
                return Some(false);
            }
            let pong = server
                .client()
                .ok()
                .and_then(|mut c| c.command(&["PING"]).ok());
            (pong == Some(Resp::Simple("PONG".into()))).then_some(true)
        });
        if up == Some(true) {
            Ok(server)
        } else {
            Err(server.dir.read("redis.log"))
        }
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`, or `rediss://` for a secure server.
    pub fn url(&self) -> String {
        let scheme = if self.secure.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The TLS material and users of a [`RedisServer::start_secure`] server.
    pub fn secure(&self) -> Option<&Secure> {
        self.secure.as_deref()
    }

    /// Stops the server and starts it again on the same port (with the
    /// same certificates and users when it is secure).
    pub fn restart(&mut self, extra: &[&str]) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let port = self.port;
        let secure = self.secure.clone();
        let fresh = wait_for(Duration::from_secs(10), || {
            Self::spawn(Scratch::new("redis"), port, secure.clone(), extra).ok()
        });
        *self = fresh.expect("redis-server restarts on its port");
    }

    /// A new client connection (over TLS and authenticated as an admin user
    /// when the server is secure).
    pub fn client(&self) -> std::io::Result<RespClient> {
        let Some(secure) = &self.secure else {
            return RespClient::connect(self.port);
        };
        let mut client = RespClient::connect_tls(self.port, secure.pki.client_config())?;
        match client.command(&["AUTH", ADMIN_USER, ADMIN_PASSWORD])? {
            Resp::Simple(ok) if ok == "OK" => Ok(client),
            other => Err(invalid(format!("AUTH {ADMIN_USER}: {other:?}"))),
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.dir.read("redis.log")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A RESP2 value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`
    Error(String),
    /// `:1`
    Integer(i64),
    /// `$n` bulk string, `None` for `$-1`.
    Bulk(Option<Vec<u8>>),
    /// `*n` array, `None` for `*-1`.
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// The value as text, for simple and bulk strings.
    pub fn text(&self) -> Option<String> {
        match self {
            Resp::Simple(s) => Some(s.clone()),
            Resp::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

/// A byte stream a [`RespClient`] speaks over: TCP, or rustls over TCP.
trait Stream: Read + Write + Send + fmt::Debug {}

impl<T: Read + Write + Send + fmt::Debug> Stream for T {}

/// A blocking RESP client over one TCP (or TLS) connection.
#[derive(Debug)]
pub struct RespClient {
    reader: BufReader<Box<dyn Stream>>,
    /// The TCP socket under `reader`, for its read timeout.
    socket: TcpStream,
}

impl RespClient {
    /// Connects to 127.0.0.1:`port` with a 5 s read timeout.
    pub fn connect(port: u16) -> std::io::Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Self {
            socket: stream.try_clone()?,
            reader: BufReader::new(Box::new(stream)),
        })
    }

    /// Connects over TLS to 127.0.0.1:`port` (server name 127.0.0.1,
    /// trusting `config`'s roots) with a 5 s read timeout; the handshake
    /// happens with the first command.
    pub fn connect_tls(port: u16, config: Arc<rustls::ClientConfig>) -> std::io::Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let name = ServerName::try_from("127.0.0.1").map_err(std::io::Error::other)?;
        let conn = rustls::ClientConnection::new(config, name).map_err(std::io::Error::other)?;
        Ok(Self {
            socket: stream.try_clone()?,
            reader: BufReader::new(Box::new(rustls::StreamOwned::new(conn, stream))),
        })
    }

    /// How long one read may block (5 s after `connect`).
    pub fn set_read_timeout(&mut self, limit: Duration) -> std::io::Result<()> {
        self.socket.set_read_timeout(Some(limit))
    }

    /// Sends a command and reads one reply.
    pub fn command(&mut self, args: &[&str]) -> std::io::Result<Resp> {
        self.send(args)?;
        self.read()
    }

    /// Sends a command without reading a reply.
    pub fn send(&mut self, args: &[&str]) -> std::io::Result<()> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        let stream = self.reader.get_mut();
        stream.write_all(&out)?;
        stream.flush()
    }

    /// Reads one reply (e.g. a pushed pub/sub message).
    pub fn read(&mut self) -> std::io::Result<Resp> {
        let line = self.line()?;
        let (kind, rest) = line.split_at(1.min(line.len()));
        let num = || {
            rest.parse::<i64>()
                .map_err(|_| invalid(format!("bad length in {line:?}")))
        };
        Ok(match kind {
            "+" => Resp::Simple(rest.to_owned()),
            "-" => Resp::Error(rest.to_owned()),
            ":" => Resp::Integer(num()?),
            "$" => match usize::try_from(num()?) {
                Err(_) => Resp::Bulk(None),
                Ok(n) => {
                    let mut buf = vec![0; n + 2];
                    self.reader.read_exact(&mut buf)?;
                    buf.truncate(n);
                    Resp::Bulk(Some(buf))
                }
            },
            "*" => match usize::try_from(num()?) {
                Err(_) => Resp::Array(None),
                Ok(n) => Resp::Array(Some((0..n).map(|_| self.read()).collect::<Result<_, _>>()?)),
            },
            _ => return Err(invalid(format!("unknown reply {line:?}"))),
        })
    }

    fn line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "redis closed the connection",
            ));
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}
