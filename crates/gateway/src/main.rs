use clap::Parser;

use claude_gateway::config::{Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(config) => {
            // Before any thread: workspace images are mounted where only the gateway sees them.
            if config.workspace_quota_mb > 0 || config.transcript_quota_mb > 0 {
                claude_gateway::tenant::volumes::private_mount_namespace();
            }
            claude_gateway::telemetry::logging::init(config.log_format);
            tokio::runtime::Runtime::new()?.block_on(claude_gateway::serve(*config))?;
        }
        Command::Check(config) => {
            claude_gateway::telemetry::logging::init(config.log_format);
            let checks =
                tokio::runtime::Runtime::new()?.block_on(claude_gateway::check::run(*config));
            for check in &checks {
                println!("{check}");
            }
            let verdict = claude_gateway::check::verdict(&checks);
            println!("{}", verdict.line);
            std::process::exit(verdict.exit_code());
        }
        Command::Keys(claude_gateway::config::KeysCommand::New { name }) => {
            let (key, line) = claude_gateway::access::new_key(&name);
            // The printed line must be one the gateway reads back.
            if let Err(e) = claude_gateway::access::AccessKeys::parse(&line) {
                eprintln!("{e}");
                std::process::exit(2);
            }
            println!("key (give it to {name}; shown once): {key}");
            println!("line (add it to the --access-keys-file): {line}");
        }
        Command::ClientTools(args) => {
            std::process::exit(claude_gateway::runner::client_tools::serve(&args.file));
        }
        Command::ClientToolHook(args) => {
            std::process::exit(claude_gateway::runner::client_tools::hook(&args.file));
        }
        Command::SandboxRelay(relay) => {
            std::process::exit(claude_gateway::sandbox::relay::run(
                &relay.forwards,
                relay.env_file.as_deref(),
                &relay.command,
            ));
        }
    }
    Ok(())
}
