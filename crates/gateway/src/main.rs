use clap::Parser;

use claude_gateway::config::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(config) => {
            claude_gateway::telemetry::logging::init(config.log_format);
            claude_gateway::serve(*config).await?;
        }
    }
    Ok(())
}
