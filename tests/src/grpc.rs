//! A raw `sluice.v1` gRPC client over the daemon's Unix socket, and a
//! minimal HTTP GET for `/metrics`, so tests check the wire contract itself.

use std::net::SocketAddr;
use std::path::PathBuf;

use futures::StreamExt;
use hyper_util::rt::TokioIo;
use sluice_proto::v1;
use sluice_proto::v1::sluice_client::SluiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Channel, Endpoint};

/// Connects to a Unix socket.
pub async fn connect(socket: impl Into<PathBuf>) -> SluiceClient<Channel> {
    SluiceClient::new(channel(socket).await)
        .max_decoding_message_size(sluice_proto::MAX_MESSAGE_SIZE)
        .max_encoding_message_size(sluice_proto::MAX_MESSAGE_SIZE)
}

/// A channel (one connection) to a Unix socket.
pub async fn channel(socket: impl Into<PathBuf>) -> Channel {
    let path: PathBuf = socket.into();
    Endpoint::try_from("http://sluiced.local")
        .expect("static uri")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .expect("connect to sluiced")
}

/// Reads `uri` (optionally a range) and returns the metadata and the bytes,
/// checking that chunk offsets are contiguous.
pub async fn read(
    client: &mut SluiceClient<Channel>,
    uri: &str,
    range: Option<v1::ByteRange>,
) -> Result<(v1::ObjectMeta, Vec<u8>), tonic::Status> {
    let req = v1::ReadRequest {
        uri: uri.to_owned(),
        range,
        no_cache: false,
    };
    let mut stream = client.read(req).await?.into_inner();
    let mut meta = None;
    let mut data = Vec::new();
    let mut start = None;
    while let Some(msg) = stream.next().await {
        let msg = msg?;
        if let Some(m) = msg.meta {
            assert!(meta.is_none(), "metadata sent twice");
            meta = Some(m);
        }
        let start = *start.get_or_insert(msg.offset);
        assert_eq!(
            msg.offset,
            start + data.len() as u64,
            "chunk offsets are contiguous"
        );
        data.extend_from_slice(&msg.data);
    }
    Ok((meta.expect("first message carries metadata"), data))
}

/// Uploads `data` in chunks of `chunk` bytes.
pub async fn write(
    client: &mut SluiceClient<Channel>,
    uri: &str,
    data: &[u8],
    chunk: usize,
    size_hint: u64,
) -> Result<v1::WriteResponse, tonic::Status> {
    use v1::write_request::Msg;
    let mut msgs = vec![v1::WriteRequest {
        msg: Some(Msg::Header(v1::WriteHeader {
            uri: uri.to_owned(),
            size_hint,
            ..Default::default()
        })),
    }];
    msgs.extend(data.chunks(chunk.max(1)).map(|c| v1::WriteRequest {
        msg: Some(Msg::Data(bytes::Bytes::copy_from_slice(c))),
    }));
    msgs.push(v1::WriteRequest {
        msg: Some(Msg::Trailer(v1::WriteTrailer {
            total_size: data.len() as u64,
        })),
    });
    client
        .write(futures::stream::iter(msgs))
        .await
        .map(|r| r.into_inner())
}

/// `GET path` over HTTP/1.1; returns status code and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path).await
}

/// `method path` over HTTP/1.1, no headers but Host; returns status code
/// and body.
pub async fn http_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect http");
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("send");
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.expect("receive");
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of one sample line of `/metrics` (`name{labels}`), 0 if absent.
pub fn metric(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Deterministic test content.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}
