//! A minimal HTTP/1.1 GET client over `std::net`, to check that a server returns exactly the
//! bytes of a file before it is measured: one request with `Connection: close` (body read to
//! the end of the stream) and two requests on one kept-alive connection (bodies delimited by
//! `Content-Length`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::sha256;

/// A parsed response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Length`, when present.
    pub content_length: Option<usize>,
    /// Body bytes.
    pub body: Vec<u8>,
}

fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

fn send_request(s: &mut TcpStream, path: &str, close: bool) -> Result<()> {
    let conn = if close { "close" } else { "keep-alive" };
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: virtuos-bench\r\nConnection: {conn}\r\n\r\n"
    )
    .context("sending request")
}

/// Reads the status line and headers; returns (status, content-length).
fn read_head(r: &mut impl BufRead) -> Result<(u16, Option<usize>)> {
    let mut line = String::new();
    r.read_line(&mut line).context("reading status line")?;
    let mut parts = line.split_whitespace();
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        bail!("bad status line {line:?}");
    };
    if !version.starts_with("HTTP/1.") {
        bail!("bad status line {line:?}");
    }
    let status: u16 = code
        .parse()
        .with_context(|| format!("bad status {code:?}"))?;
    let mut content_length = None;
    loop {
        line.clear();
        if r.read_line(&mut line).context("reading header")? == 0 {
            bail!("connection closed inside the response headers");
        }
        let h = line.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                content_length = Some(v.trim().parse().context("bad Content-Length")?);
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                bail!("chunked responses are not expected from a static file");
            }
        }
    }
    Ok((status, content_length))
}

/// GET `path` with `Connection: close`; the body runs to the end of the stream.
pub fn get_close(addr: SocketAddr, path: &str) -> Result<Response> {
    let mut s = connect(addr)?;
    send_request(&mut s, path, true)?;
    let mut r = BufReader::new(s);
    let (status, content_length) = read_head(&mut r)?;
    let mut body = Vec::new();
    r.read_to_end(&mut body).context("reading body")?;
    Ok(Response {
        status,
        content_length,
        body,
    })
}

/// `n` GETs of `path` on one kept-alive connection; bodies are delimited by Content-Length.
pub fn get_keepalive(addr: SocketAddr, path: &str, n: usize) -> Result<Vec<Response>> {
    let mut s = connect(addr)?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        send_request(&mut s, path, false)?;
        let (status, content_length) = read_head(&mut r)?;
        let len = content_length.context("keep-alive response without Content-Length")?;
        let mut body = vec![0; len];
        r.read_exact(&mut body).context("reading body")?;
        out.push(Response {
            status,
            content_length,
            body,
        });
    }
    Ok(out)
}

fn check(resp: &Response, size: usize, sha256_hex: &str, what: &str) -> Result<()> {
    if resp.status != 200 {
        bail!("{what}: status {} (want 200)", resp.status);
    }
    if resp.content_length.is_some_and(|l| l != size) {
        bail!(
            "{what}: Content-Length {:?}, want {size}",
            resp.content_length
        );
    }
    if resp.body.len() != size {
        bail!("{what}: {} body bytes, want {size}", resp.body.len());
    }
    let got = sha256::hex_digest(&resp.body);
    if got != sha256_hex {
        bail!("{what}: body sha256 {got}, want {sha256_hex}");
    }
    Ok(())
}

/// Checks that `path` is served with status 200 and exactly `size` bytes hashing to
/// `sha256_hex`, with and without keep-alive.
pub fn verify(addr: SocketAddr, path: &str, size: usize, sha256_hex: &str) -> Result<()> {
    let r = get_close(addr, path)?;
    check(&r, size, sha256_hex, "Connection: close")?;
    for (i, r) in get_keepalive(addr, path, 2)?.iter().enumerate() {
        check(
            r,
            size,
            sha256_hex,
            &format!("keep-alive request {}", i + 1),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-thread server that answers `conns` connections with `body` (keep-alive aware).
    fn serve(body: Vec<u8>, conns: usize, status: &'static str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for _ in 0..conns {
                let (s, _) = l.accept().unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                loop {
                    let mut close = false;
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    loop {
                        line.clear();
                        r.read_line(&mut line).unwrap();
                        if line.to_ascii_lowercase().starts_with("connection: close") {
                            close = true;
                        }
                        if line.trim().is_empty() {
                            break;
                        }
                    }
                    write!(
                        w,
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    )
                    .unwrap();
                    w.write_all(&body).unwrap();
                    if close {
                        break;
                    }
                }
            }
        });
        addr
    }

    #[test]
    fn verifies_good_content() {
        let body: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let hex = sha256::hex_digest(&body);
        let addr = serve(body.clone(), 2, "200 OK");
        verify(addr, "/f", body.len(), &hex).unwrap();
    }

    #[test]
    fn rejects_wrong_content_and_status() {
        let body = b"hello".to_vec();
        let addr = serve(body.clone(), 1, "200 OK");
        let err = verify(addr, "/f", 5, &sha256::hex_digest(b"world")).unwrap_err();
        assert!(err.to_string().contains("sha256"), "{err}");
        let addr = serve(body.clone(), 1, "404 Not Found");
        let err = verify(addr, "/f", 5, &sha256::hex_digest(&body)).unwrap_err();
        assert!(err.to_string().contains("404"), "{err}");
    }
}
