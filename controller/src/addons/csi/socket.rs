//! The Unix sockets the driver's gRPC services listen on (the kubelet and the CSI sidecars only
//! speak gRPC over local sockets).

use std::path::Path;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

/// Listens on `path`, replacing a socket left by an earlier run (a stale socket refuses every
/// connection, and binding over it fails), and creating its directory.
pub fn bind(path: &Path) -> std::io::Result<UnixListenerStream> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(UnixListenerStream::new(UnixListener::bind(path)?))
}
