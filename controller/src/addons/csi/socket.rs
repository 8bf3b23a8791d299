//! The Unix sockets the driver's gRPC services listen on (the kubelet and the CSI sidecars only
//! speak gRPC over local sockets), and the one fix their clients need.
//!
//! The kubelet dials the plugin-registration socket with gRPC-Go naming the socket's path as
//! the target, and gRPC-Go sends that path as the HTTP/2 `:authority`. The h2 crate under tonic
//! refuses an authority that is not a host (it resets the stream with PROTOCOL_ERROR), so the
//! kubelet would never register the driver. [`LocalAuthority`] rewrites, on the way in, the
//! `:authority` of each request on such a socket to `localhost`, which gRPC clients send for Unix
//! sockets elsewhere; nothing else of the connection changes.

use futures::{Stream, StreamExt};
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::server::Connected;

/// Listens on `path`, replacing a socket left by an earlier run (a stale socket refuses every
/// connection, and binding over it fails), and creating its directory.
pub fn bind(
    path: &Path,
) -> io::Result<impl Stream<Item = io::Result<LocalAuthority<UnixStream>>> + use<>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let incoming = UnixListenerStream::new(UnixListener::bind(path)?);
    Ok(incoming.map(|conn| conn.map(LocalAuthority::new)))
}

/// The client preface that opens every HTTP/2 connection.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
const AUTHORITY: &[u8] = b"localhost";
/// For an original authority shorter than `localhost`: the replacement is never longer than what
/// it replaces, so the server's dynamic table never evicts an entry the client still refers to.
const SHORT_AUTHORITY: &[u8] = b"l";

/// A server-side connection whose requests' `:authority` reads `localhost`.
pub struct LocalAuthority<S> {
    inner: S,
    /// Read from the client, not yet a whole frame.
    pending: Vec<u8>,
    /// Rewritten, not yet handed to the server.
    ready: Vec<u8>,
    preface_seen: bool,
    eof: bool,
}

impl<S> LocalAuthority<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            ready: Vec::new(),
            preface_seen: false,
            eof: false,
        }
    }

    /// Moves every whole frame from `pending` to `ready`, rewriting request headers.
    fn process(&mut self) {
        if !self.preface_seen {
            if self.pending.len() < PREFACE.len() {
                return;
            }
            self.ready.extend(self.pending.drain(..PREFACE.len()));
            self.preface_seen = true;
        }
        loop {
            if self.pending.len() < FRAME_HEADER {
                return;
            }
            let len =
                u32::from_be_bytes([0, self.pending[0], self.pending[1], self.pending[2]]) as usize;
            if self.pending.len() < FRAME_HEADER + len {
                return;
            }
            let frame: Vec<u8> = self.pending.drain(..FRAME_HEADER + len).collect();
            match rewrite_frame(&frame) {
                Some(rewritten) => self.ready.extend(rewritten),
                None => self.ready.extend(frame),
            }
        }
    }
}

/// The frame with its request's `:authority` set to `localhost`, if it is a HEADERS frame that
/// holds a whole header block with an `:authority` literal (a block continued in CONTINUATION
/// frames passes unchanged: gRPC requests are far smaller than a frame).
pub fn rewrite_frame(frame: &[u8]) -> Option<Vec<u8>> {
    let (kind, flags) = (frame[3], frame[4]);
    if kind != HEADERS || flags & END_HEADERS == 0 {
        return None;
    }
    let payload = &frame[FRAME_HEADER..];
    let mut start = 0;
    let mut padding = 0;
    if flags & PADDED != 0 {
        padding = *payload.first()? as usize;
        start += 1;
    }
    if flags & PRIORITY != 0 {
        start += 5;
    }
    let end = payload.len().checked_sub(padding)?;
    if start > end {
        return None;
    }
    let block = rewrite_block(&payload[start..end])?;
    let mut out = Vec::with_capacity(frame.len() + AUTHORITY.len());
    let len = (start + block.len() + padding) as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&frame[3..FRAME_HEADER]);
    out.extend_from_slice(&payload[..start]);
    out.extend_from_slice(&block);
    out.extend_from_slice(&payload[end..]);
    Some(out)
}

/// An HPACK header block with the value of its `:authority` literal replaced by `localhost`
/// (None: no such literal, or not a block this reads). Only the representations are walked;
/// names and values are not decoded, so Huffman coding does not matter. The dynamic table stays
/// in step: an indexed `:authority` is added at the same place on both sides.
pub fn rewrite_block(block: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(block.len());
    let mut at = 0;
    let mut changed = false;
    while at < block.len() {
        let first = block[at];
        let start = at;
        if first & 0x80 != 0 {
            // Indexed field.
            at = integer(block, at, 7)?.1;
            out.extend_from_slice(&block[start..at]);
            continue;
        }
        if first & 0xe0 == 0x20 {
            // Dynamic table size update.
            at = integer(block, at, 5)?.1;
            out.extend_from_slice(&block[start..at]);
            continue;
        }
        // A literal: with incremental indexing (6-bit name index) or without / never indexed
        // (4-bit).
        let prefix = if first & 0x40 != 0 { 6 } else { 4 };
        let (name_index, after_index) = integer(block, at, prefix)?;
        at = after_index;
        let is_authority = if name_index == 0 {
            let (name, after_name) = string(block, at)?;
            at = after_name;
            name == b":authority"
        } else {
            // The static table's first entry is `:authority`.
            name_index == 1
        };
        let value_start = at;
        let (value, after_value) = string(block, at)?;
        at = after_value;
        out.extend_from_slice(&block[start..value_start]);
        if is_authority && !value.is_empty() {
            // The value's decoded length is at least its raw length, or, Huffman-coded (at most
            // 30 bits a character), 8/30 of it.
            let huffman = block[value_start] & 0x80 != 0;
            let at_least = if huffman {
                value.len() * 8 / 30
            } else {
                value.len()
            };
            let host = if at_least >= AUTHORITY.len() {
                AUTHORITY
            } else {
                SHORT_AUTHORITY
            };
            out.push(host.len() as u8);
            out.extend_from_slice(host);
            changed = true;
        } else {
            out.extend_from_slice(&block[value_start..at]);
        }
    }
    changed.then_some(out)
}

/// An HPACK integer with an `n`-bit prefix at `at`: its value and where it ends.
fn integer(block: &[u8], at: usize, n: u32) -> Option<(u64, usize)> {
    let max = (1u64 << n) - 1;
    let mut value = u64::from(*block.get(at)?) & max;
    let mut at = at + 1;
    if value < max {
        return Some((value, at));
    }
    let mut shift = 0;
    loop {
        let b = *block.get(at)?;
        at += 1;
        value = value.checked_add(u64::from(b & 0x7f).checked_shl(shift)?)?;
        if b & 0x80 == 0 {
            return Some((value, at));
        }
        shift += 7;
        if shift > 56 {
            return None;
        }
    }
}

/// An HPACK string literal at `at`: its raw bytes (Huffman-coded or not) and where it ends.
fn string(block: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let (len, start) = integer(block, at, 7)?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    Some((block.get(start..end)?, end))
}

impl<S: AsyncRead + Unpin> AsyncRead for LocalAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.drain(..n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // What is left is no whole frame: hand it on as it is, then the end.
                this.ready = std::mem::take(&mut this.pending);
                if this.ready.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {
                    if read.filled().is_empty() {
                        this.eof = true;
                    } else {
                        this.pending.extend_from_slice(read.filled());
                        this.process();
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LocalAuthority<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for LocalAuthority<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header block as gRPC-Go writes a request's first: `:method POST` and `:scheme http`
    /// indexed, `:path` and `:authority` as literals with incremental indexing of static names.
    fn block(authority: &[u8]) -> Vec<u8> {
        let path = b"/pluginregistration.Registration/GetInfo";
        let mut b = vec![0x83, 0x86, 0x44, path.len() as u8];
        b.extend_from_slice(path);
        b.push(0x41);
        b.push(authority.len() as u8);
        b.extend_from_slice(authority);
        b.extend_from_slice(&[0x5f, 0x10]);
        b.extend_from_slice(b"application/grpc");
        b
    }

    #[test]
    fn the_authority_of_a_request_becomes_localhost() {
        let socket = b"/var/lib/kubelet/plugins_registry/csi.orrery.dev-reg.sock";
        assert_eq!(rewrite_block(&block(socket)).unwrap(), block(b"localhost"));
    }

    #[test]
    fn a_short_authority_is_never_made_longer() {
        assert_eq!(rewrite_block(&block(b"a/b")).unwrap(), block(b"l"));
        // Huffman-coded, 12 bytes: at least 3 characters, so not `localhost` (9).
        let mut huffman = block(&[0xff; 12]);
        let length_byte = huffman.len() - 12 - 18 - 1;
        huffman[length_byte] |= 0x80;
        assert_eq!(rewrite_block(&huffman).unwrap(), block(b"l"));
    }

    #[test]
    fn blocks_without_an_authority_literal_are_left_alone() {
        // A later request refers to the indexed `:authority` (dynamic table entry 62).
        assert_eq!(rewrite_block(&[0x83, 0x86, 0xbe]), None);
        assert_eq!(rewrite_block(&[0x41]), None, "cut short");
    }

    #[test]
    fn long_values_and_literal_names_are_read_whole() {
        let long = vec![b'a'; 300];
        let mut b = vec![0x41, 0x7f, (300 - 127) as u8 | 0x80, 0x01];
        b.extend_from_slice(&long);
        assert_eq!(integer(&b, 1, 7), Some((300, 4)));
        assert_eq!(
            rewrite_block(&b).unwrap(),
            [&[0x41, 9][..], b"localhost"].concat()
        );
        let mut named = vec![0x00, 10];
        named.extend_from_slice(b":authority");
        named.push(11);
        named.extend_from_slice(b"/run/a.sock");
        let mut want = vec![0x00, 10];
        want.extend_from_slice(b":authority");
        want.push(9);
        want.extend_from_slice(b"localhost");
        assert_eq!(rewrite_block(&named).unwrap(), want);
    }

    #[test]
    fn a_headers_frame_keeps_its_padding_and_priority_with_a_new_length() {
        let old = block(b"/a/b.sock");
        let mut payload = vec![2u8, 0, 0, 0, 0, 16];
        payload.extend_from_slice(&old);
        payload.extend_from_slice(&[0, 0]);
        let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        frame.extend_from_slice(&[HEADERS, END_HEADERS | PADDED | PRIORITY, 0, 0, 0, 1]);
        frame.extend_from_slice(&payload);
        let new = rewrite_frame(&frame).unwrap();
        let len = u32::from_be_bytes([0, new[0], new[1], new[2]]) as usize;
        assert_eq!(len, new.len() - FRAME_HEADER);
        assert_eq!(&new[FRAME_HEADER..FRAME_HEADER + 6], &[2, 0, 0, 0, 0, 16]);
        assert_eq!(
            &new[FRAME_HEADER + 6..new.len() - 2],
            block(b"localhost").as_slice()
        );
        assert_eq!(&new[new.len() - 2..], &[0, 0]);
        // Any other frame passes as it is.
        let mut data = frame.clone();
        data[3] = 0x0;
        assert_eq!(rewrite_frame(&data), None);
    }

    #[tokio::test]
    async fn a_connection_is_rewritten_across_reads() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(16);
        let old = block(b"/run/x.sock");
        let mut frame = (old.len() as u32).to_be_bytes()[1..].to_vec();
        frame.extend_from_slice(&[HEADERS, END_HEADERS, 0, 0, 0, 1]);
        frame.extend_from_slice(&old);
        let mut sent = PREFACE.to_vec();
        sent.extend_from_slice(&frame);
        tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        LocalAuthority::new(server)
            .read_to_end(&mut got)
            .await
            .unwrap();
        let new = block(b"localhost");
        let mut want = PREFACE.to_vec();
        want.extend_from_slice(&(new.len() as u32).to_be_bytes()[1..]);
        want.extend_from_slice(&[HEADERS, END_HEADERS, 0, 0, 0, 1]);
        want.extend_from_slice(&new);
        assert_eq!(got, want);
    }
}
