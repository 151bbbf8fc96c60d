//! `lease-holder ADDRESS URI...`: opens a shared-memory session with the
//! daemon at ADDRESS, fetches every URI and keeps the leases, prints
//! `holding <total bytes>`, then sleeps until killed. The end-to-end tests
//! kill it to check that a client's death releases its leases.

use std::io::Write;

use anyhow::{Context, bail};
use sluice_client::{Client, Delivery, SessionOptions};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(address) = args.next() else {
        bail!("usage: lease-holder ADDRESS URI...");
    };
    let client = Client::connect(&address).await?;
    let options = SessionOptions {
        delivery: Delivery::SharedMemory,
        ..Default::default()
    };
    let session = client.session(options).await?;
    let mut held = Vec::new();
    for uri in args {
        held.push(session.fetch(&uri, None).await.context(uri)?);
    }
    let total: u64 = held.iter().map(|fetched| fetched.len()).sum();
    let mut stdout = std::io::stdout();
    writeln!(stdout, "holding {total}")?;
    stdout.flush()?;
    std::future::pending::<()>().await;
    drop(held);
    Ok(())
}
