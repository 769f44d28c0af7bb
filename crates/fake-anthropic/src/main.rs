use std::net::SocketAddr;

use clap::Parser;

/// A scriptable fake of the Anthropic API for tests, benchmarks and demos.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, env = "FAKE_ANTHROPIC_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let handle = fake_anthropic::FakeAnthropic::start(args.listen).await?;
    // Scripts that start this binary read the address from this line.
    println!("fake-anthropic listening on {}", handle.base_url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
