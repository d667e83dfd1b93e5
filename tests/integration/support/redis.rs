//! A real `redis-server` on a free loopback port, and a small RESP client
//! that is independent of the code under test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::ports::free_tcp_port;
use super::scratch::Scratch;
use super::{require_program, wait_for};

/// How many ports to try when the one picked is taken in the meantime.
const START_ATTEMPTS: u32 = 5;

/// A redis-server process, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    port: u16,
    dir: Scratch,
}

impl RedisServer {
    /// Starts redis-server with persistence off; `extra` are more
    /// `--name value` arguments (e.g. `["--timeout", "2"]`).
    pub fn start(extra: &[&str]) -> Self {
        require_program("redis-server", "redis-server");
        let mut last_log = String::new();
        for _ in 0..START_ATTEMPTS {
            let dir = Scratch::new("redis");
            let port = free_tcp_port();
            match Self::spawn(dir, port, extra) {
                Ok(server) => return server,
                Err(log) => last_log = log,
            }
        }
        panic!("redis-server did not start after {START_ATTEMPTS} attempts; last log:\n{last_log}");
    }

    fn spawn(dir: Scratch, port: u16, extra: &[&str]) -> Result<Self, String> {
        let log = dir.path().join("redis.log");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
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
        let mut server = Self { child, port, dir };
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

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server and starts it again on the same port.
    pub fn restart(&mut self, extra: &[&str]) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let port = self.port;
        let fresh = wait_for(Duration::from_secs(10), || {
            Self::spawn(Scratch::new("redis"), port, extra).ok()
        });
        *self = fresh.expect("redis-server restarts on its port");
    }

    /// A new client connection.
    pub fn client(&self) -> std::io::Result<RespClient> {
        RespClient::connect(self.port)
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

/// A blocking RESP client over one TCP connection.
#[derive(Debug)]
pub struct RespClient {
    reader: BufReader<TcpStream>,
}

impl RespClient {
    /// Connects to 127.0.0.1:`port` with a 5 s read timeout.
    pub fn connect(port: u16) -> std::io::Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Self {
            reader: BufReader::new(stream),
        })
    }

    /// How long one read may block (5 s after `connect`).
    pub fn set_read_timeout(&mut self, limit: Duration) -> std::io::Result<()> {
        self.reader.get_ref().set_read_timeout(Some(limit))
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
        self.reader.get_mut().write_all(&out)
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
