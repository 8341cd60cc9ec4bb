//! redis-server as the benchmark starts it: configuration on the command line only (no
//! configuration file, nothing of the system's redis setup), on 127.0.0.1 and a free port, a
//! directory of its own as `--dir`; natively or under `virtuos-redirect run --net SOCK --`
//! (which becomes redis-server, same pid), pinned with taskset; and the RESP check every mode
//! passes before it is measured.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::nginx::stack::{app_command, stop_child, tail, wait_listening};
use crate::procs;

/// How redis-server is started.
#[derive(Debug, Clone)]
pub struct RedisLaunch {
    /// The redis-server binary.
    pub binary: PathBuf,
    /// `virtuos-redirect` and its arguments before `--`, for the redirected modes.
    pub redirect: Option<(PathBuf, Vec<String>)>,
    /// CPUs for redis-server (all its threads).
    pub cpus: Vec<usize>,
    /// Its `--dir` and where its output goes.
    pub dir: PathBuf,
    /// Port on 127.0.0.1.
    pub port: u16,
}

impl RedisLaunch {
    /// redis-server's arguments: no persistence, no protected mode, in the foreground.
    pub fn args(&self) -> Vec<String> {
        [
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
            "--dir",
            &self.dir.display().to_string(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    }
}

/// A running redis-server.
pub struct Redis {
    child: Child,
    out: PathBuf,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Redis {
    /// Starts redis-server and waits until it accepts connections and answers PING.
    pub fn start(launch: &RedisLaunch) -> Result<Self> {
        let out = launch.dir.join("redis.out");
        let mut cmd = app_command(&launch.cpus, launch.redirect.as_ref(), &launch.binary);
        cmd.args(launch.args())
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out)?)
            .stderr(fs::File::create(&out)?.try_clone()?);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} under taskset", launch.binary.display()))?;
        let mut redis = Self {
            child,
            out,
            addr: SocketAddr::from(([127, 0, 0, 1], launch.port)),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let out = redis.out.clone();
        wait_listening(
            &mut redis.child,
            redis.addr,
            deadline,
            "redis-server",
            &|| tail(&out, 8),
        )?;
        // Listening comes before loading is done: PING answers LOADING until it is ready.
        loop {
            match ping(redis.addr) {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => {
                    bail!(
                        "redis-server does not answer PING: {e:#}\n{}",
                        redis.logs_tail()
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        Ok(redis)
    }

    /// Its pid (under `virtuos-redirect run`, the same process: run becomes redis-server).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Pids of redis-server and any child of it.
    pub fn pids(&self) -> Vec<u32> {
        procs::tree_pids(self.pid())
    }

    /// CPU seconds used by redis-server (all threads) and any child of it.
    pub fn cpu_s(&self) -> f64 {
        procs::tree_cpu_s(self.pid())
    }

    /// `Err` with its output when it is no longer running.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(st) = self.child.try_wait()? {
            bail!("redis-server exited ({st}):\n{}", self.logs_tail());
        }
        Ok(())
    }

    /// The last lines of its output.
    pub fn logs_tail(&self) -> String {
        tail(&self.out, 8)
    }

    /// Stops it (SIGTERM: with no persistence configured it exits at once, and the shim writes
    /// its exit report); SIGKILL after 10 s. Returns its output.
    pub fn stop(mut self) -> String {
        self.shutdown();
        fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn shutdown(&mut self) {
        let pid = self.pid();
        stop_child(
            &mut self.child,
            pid,
            libc::SIGTERM,
            Duration::from_secs(10),
            "redis-server",
        );
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.shutdown();
    }
}

// ----- RESP, as much as the check needs ---------------------------------------------------------

/// A reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`.
    Simple(String),
    /// `-ERR ...`.
    Error(String),
    /// `:1`.
    Integer(i64),
    /// `$3\r\nabc` (`None`: `$-1`, no value).
    Bulk(Option<Vec<u8>>),
}

/// A command as a RESP array of bulk strings.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        v.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        v.extend_from_slice(a);
        v.extend_from_slice(b"\r\n");
    }
    v
}

/// The first reply in `buf` and the bytes it took; `Ok(None)` when it is not complete yet.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[1..end]).context("reply line is not UTF-8")?;
    let after = end + 2;
    let reply = match buf.first() {
        Some(b'+') => Reply::Simple(line.to_owned()),
        Some(b'-') => Reply::Error(line.to_owned()),
        Some(b':') => Reply::Integer(line.parse().context("integer reply")?),
        Some(b'$') => {
            let n: i64 = line.parse().context("bulk length")?;
            if n < 0 {
                return Ok(Some((Reply::Bulk(None), after)));
            }
            let n = n as usize;
            if buf.len() < after + n + 2 {
                return Ok(None);
            }
            if &buf[after + n..after + n + 2] != b"\r\n" {
                bail!("bulk reply not terminated by CRLF");
            }
            return Ok(Some((
                Reply::Bulk(Some(buf[after..after + n].to_vec())),
                after + n + 2,
            )));
        }
        _ => bail!(
            "unexpected reply {:?}",
            String::from_utf8_lossy(&buf[..end])
        ),
    };
    Ok(Some((reply, after)))
}

/// Sends one command on `s` and reads its reply.
fn call(s: &mut TcpStream, args: &[&[u8]]) -> Result<Reply> {
    s.write_all(&encode(args))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((r, _)) = parse_reply(&buf)? {
            return Ok(r);
        }
        let n = s.read(&mut chunk).context("reading the reply")?;
        if n == 0 {
            bail!("connection closed before a full reply");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

/// `PING` answers `+PONG`.
pub fn ping(addr: SocketAddr) -> Result<()> {
    let mut s = connect(addr)?;
    match call(&mut s, &[b"PING"])? {
        Reply::Simple(p) if p == "PONG" => Ok(()),
        other => bail!("PING answered {other:?}"),
    }
}

/// The check every stack passes before it is measured: a random value set, read back byte for
/// byte (and the key deleted), on one connection.
pub fn check(addr: SocketAddr, key: &str, value: &[u8]) -> Result<()> {
    let mut s = connect(addr)?;
    match call(&mut s, &[b"SET", key.as_bytes(), value])? {
        Reply::Simple(ok) if ok == "OK" => {}
        other => bail!("SET answered {other:?}"),
    }
    match call(&mut s, &[b"GET", key.as_bytes()])? {
        Reply::Bulk(Some(v)) if v == value => {}
        Reply::Bulk(Some(v)) => bail!(
            "GET returned {} bytes that differ from the {} set",
            v.len(),
            value.len()
        ),
        other => bail!("GET answered {other:?}"),
    }
    match call(&mut s, &[b"DEL", key.as_bytes()])? {
        Reply::Integer(1) => Ok(()),
        other => bail!("DEL answered {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_the_contract() {
        let l = RedisLaunch {
            binary: PathBuf::from("/usr/bin/redis-server"),
            redirect: None,
            cpus: vec![0],
            dir: PathBuf::from("/tmp/r"),
            port: 6390,
        };
        assert_eq!(
            l.args().join(" "),
            "--port 6390 --bind 127.0.0.1 --save  --appendonly no --protected-mode no \
             --daemonize no --dir /tmp/r"
        );
        assert_eq!(l.args()[5], "", "--save '' (no snapshots)");
    }

    #[test]
    fn resp_encoding_and_replies() {
        assert_eq!(encode(&[b"GET", b"k"]), b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
        assert_eq!(
            parse_reply(b"+OK\r\nrest").unwrap(),
            Some((Reply::Simple("OK".to_owned()), 5))
        );
        assert_eq!(
            parse_reply(b"-ERR no\r\n").unwrap(),
            Some((Reply::Error("ERR no".to_owned()), 9))
        );
        assert_eq!(
            parse_reply(b":12\r\n").unwrap(),
            Some((Reply::Integer(12), 5))
        );
        assert_eq!(
            parse_reply(b"$3\r\na\r\n\r\n").unwrap(),
            Some((Reply::Bulk(Some(b"a\r\n".to_vec())), 9))
        );
        assert_eq!(
            parse_reply(b"$-1\r\n").unwrap(),
            Some((Reply::Bulk(None), 5))
        );
        // Incomplete: wait for more.
        assert_eq!(parse_reply(b"$3\r\nab").unwrap(), None);
        assert_eq!(parse_reply(b"+OK").unwrap(), None);
        assert!(parse_reply(b"?x\r\n").is_err());
        assert!(parse_reply(b"$2\r\nabcd").is_err());
    }
}
