//! `peer-probe SOCKET URI`: what a client process gets from the daemon at
//! SOCKET, one line each on stdout: a Read of URI (`read ok <bytes>` or
//! `read err <code> <message>`), a Session open (`session ok <id>` or
//! `session err <code> <message>`), and the descriptor socket
//! `SOCKET.fds` (`fds ok <segments>` or `fds err <error>`); with
//! `FACADE_SOCKET PATH` too, an unsigned S3 GET of PATH on the facade's
//! Unix socket (`facade <status line>`, or `facade closed` when the
//! connection ends unanswered). The peer credential tests run it under
//! other uids.

use std::io::Write;

use futures::StreamExt;

use sluice_proto::v1;
use sluice_proto::v1::session_request::Msg as In;
use sluice_proto::v1::session_response::Msg as Out;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(socket), Some(uri)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: peer-probe SOCKET URI [FACADE_SOCKET PATH]");
    };
    let facade = args.next().zip(args.next());
    let mut out = std::io::stdout();
    let mut client = sluice_tests::grpc::connect(&socket).await;
    match sluice_tests::grpc::read(&mut client, &uri, None).await {
        Ok((_, data)) => writeln!(out, "read ok {}", data.len())?,
        Err(s) => writeln!(out, "read err {:?} {}", s.code(), s.message())?,
    }
    let open = v1::SessionRequest {
        msg: Some(In::Open(v1::SessionOpen {
            shared_memory: false,
            pid: std::process::id(),
            batches: false,
        })),
    };
    let opened = async {
        let mut rx = client
            .session(futures::stream::iter([open]).chain(futures::stream::pending()))
            .await?
            .into_inner();
        match rx.message().await?.and_then(|m| m.msg) {
            Some(Out::Opened(o)) => Ok(o.session_id),
            other => Err(tonic::Status::internal(format!("{other:?}"))),
        }
    };
    match opened.await {
        Ok(id) => writeln!(out, "session ok {id}")?,
        Err(s) => writeln!(out, "session err {:?} {}", s.code(), s.message())?,
    }
    let fds = std::os::unix::net::UnixStream::connect(format!("{socket}.fds"))
        .and_then(|s| sluice_proto::fdpass::recv_segments(&s));
    match fds {
        Ok(segments) => writeln!(out, "fds ok {}", segments.len())?,
        Err(e) => writeln!(out, "fds err {e}")?,
    }
    if let Some((socket, path)) = facade {
        writeln!(out, "facade {}", facade_get(&socket, &path))?;
    }
    out.flush()?;
    Ok(())
}

/// The status line of an unsigned GET of `path` on the facade at `socket`;
/// `closed` when the facade closed the connection unanswered, `connect err
/// …` when the socket refused the connection.
fn facade_get(socket: &str, path: &str) -> String {
    use std::io::Read;
    let mut s = match std::os::unix::net::UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => return format!("connect err {e}"),
    };
    let answer = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n\r\n"
    )
    .and_then(|()| {
        let mut answer = Vec::new();
        s.read_to_end(&mut answer)?;
        Ok(answer)
    });
    match answer {
        Ok(a) if !a.is_empty() => String::from_utf8_lossy(&a)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
        // Closed before, while or after the request was written, or reset.
        _ => "closed".to_owned(),
    }
}
