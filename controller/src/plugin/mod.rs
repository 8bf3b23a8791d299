//! `kubectl orrery`, the kubectl plugin (binary `kubectl-orrery`): a tenant at a glance, its
//! kubeconfig, and day-2 verbs that set one spec field and wait while Orrery carries it out.
//!
//! One job a module: [`cli`] (the command line), [`connect`] (the management cluster and the
//! tenant lookup), [`error`] (errors that say what to do), [`kubeconfig`] (`get kubeconfig`),
//! [`describe`] (the tree), [`wait`], [`upgrade`] and [`scale`] (a NodePool). A new verb is a
//! variant of [`cli::Command`], a module, and one arm in [`run`].

pub mod cli;
pub mod connect;
pub mod describe;
pub mod error;
pub mod kubeconfig;
pub mod scale;
pub mod upgrade;
pub mod wait;

use clap::Parser;
use cli::{Cli, Command, Get, Output};
use error::{Error, Result};
use kube::api::PatchParams;
use serde::Serialize;
use std::process::ExitCode;

/// The field manager of the plugin's writes.
pub const FIELD_MANAGER: &str = "kubectl-orrery";

/// How the plugin writes: as [`FIELD_MANAGER`].
pub fn write_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

/// Runs `kubectl-orrery` with the process's arguments.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Get(Get::Kubeconfig(args)) => kubeconfig::run(&cli.client, args).await,
        Command::Describe(args) => {
            describe::run(&cli.client, args, describe::render::colour_wanted()).await
        }
        Command::Wait(args) => wait::run(&cli.client, args).await,
        Command::Upgrade(args) => upgrade::run(&cli.client, args).await,
        Command::Scale(args) => scale::run(&cli.client, args).await,
    }
}

/// Prints `value` as JSON or YAML on stdout.
pub fn print<T: Serialize>(value: &T, format: Output) -> Result<()> {
    let text = match format {
        Output::Json => serde_json::to_string_pretty(value)
            .map(|s| s + "\n")
            .map_err(|e| e.to_string()),
        Output::Yaml => serde_yaml_ng::to_string(value).map_err(|e| e.to_string()),
    }
    .map_err(Error::Invalid)?;
    print!("{text}");
    Ok(())
}

/// Prints an object as kubectl does, without its managed fields.
pub fn print_object<K: kube::Resource + Serialize + Clone>(obj: &K, format: Output) -> Result<()> {
    let mut obj = obj.clone();
    obj.meta_mut().managed_fields = None;
    print(&obj, format)
}
