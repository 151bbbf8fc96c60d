//! `latency-proxy LISTEN UPSTREAM DELAY_MS`: a TCP proxy that adds object
//! store-like latency in front of a loopback server, for benchmarks. Every
//! burst of bytes a client sends (an HTTP request: a client sends the next
//! one only after the previous answer) waits DELAY_MS before it goes
//! upstream; answers pass at once. So each request sees DELAY_MS more
//! before its first byte, and nothing else on the machine is slowed (no
//! `tc netem` on a shared interface). Prints the address it listens on.

use std::io::Write;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream, delay] = args.as_slice() else {
        anyhow::bail!("usage: latency-proxy LISTEN UPSTREAM DELAY_MS");
    };
    let delay = Duration::from_millis(delay.parse()?);
    let listener = TcpListener::bind(listen).await?;
    writeln!(std::io::stdout(), "{}", listener.local_addr()?)?;
    std::io::stdout().flush()?;
    loop {
        let (client, _) = listener.accept().await?;
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let Ok(up) = TcpStream::connect(&upstream).await else {
                return;
            };
            let _ = (client.set_nodelay(true), up.set_nodelay(true));
            let (mut client_r, mut client_w) = client.into_split();
            let (mut up_r, mut up_w) = up.into_split();
            let requests = async {
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = client_r.read(&mut buf).await?;
                    if n == 0 {
                        return up_w.shutdown().await;
                    }
                    tokio::time::sleep(delay).await;
                    up_w.write_all(&buf[..n]).await?;
                }
            };
            let answers = tokio::io::copy(&mut up_r, &mut client_w);
            let _ = tokio::join!(requests, answers);
        });
    }
}
