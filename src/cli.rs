//! The command line: `minicrm` serves (the default); `minicrm check` and
//! `minicrm backup` are tools for the same database (API.md, "Running").

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};

use crate::{config::Settings, db::DatabaseUrl};

/// minicrm: hands contacts from many chat bots to operators, by weight,
/// within each operator's load limit. Serves gRPC unless given a command.
#[derive(Debug, Parser)]
#[command(
    name = "minicrm",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(flatten)]
    pub settings: Settings,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Verify every invariant and counter of the database (loads, limits,
    /// the GetOperatorStats counters, the contacts' fields); exits 1 with a
    /// report when one fails. Safe while servers run.
    Check(CheckArgs),
    /// Write a consistent copy of a SQLite database to PATH while servers
    /// keep serving it (for PostgreSQL, use pg_dump).
    Backup(BackupArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The database, as for serving.
    #[arg(long, env = "DATABASE_URL", default_value = "minicrm.db")]
    pub database_url: String,

    /// Recompute the operators' loads and the counters from the contacts, in
    /// one transaction (writers wait for it), then check again.
    #[arg(long)]
    pub repair: bool,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The database, as for serving.
    #[arg(long, env = "DATABASE_URL", default_value = "minicrm.db")]
    pub database_url: String,

    /// Where to write the copy; must not exist yet. Created readable by its
    /// owner only.
    pub path: PathBuf,
}

/// Exit status: the check ran and found problems.
const FOUND_PROBLEMS: u8 = 1;
/// Exit status: the tool could not do its work.
const FAILED: u8 = 2;

/// `minicrm check [--repair]`: prints the report; exits 0 when everything
/// holds, 1 when something does not, 2 when the check could not run.
pub fn check(args: &CheckArgs) -> ExitCode {
    let url = match DatabaseUrl::parse(&args.database_url) {
        Ok(url) => url,
        Err(error) => return fail(&error),
    };
    match crate::db::check(&url, args.repair) {
        Ok(report) => {
            print!("{report}");
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(FOUND_PROBLEMS)
            }
        }
        Err(error) => fail(&error),
    }
}

/// `minicrm backup PATH`: exits 0 once the copy is written and checked.
pub fn backup(args: &BackupArgs) -> ExitCode {
    let url = match DatabaseUrl::parse(&args.database_url) {
        Ok(url) => url,
        Err(error) => return fail(&error),
    };
    match crate::db::backup(&url, &args.path) {
        Ok(backup) => {
            println!(
                "backup written to {} ({} bytes); its integrity check passed",
                args.path.display(),
                backup.bytes
            );
            ExitCode::SUCCESS
        }
        Err(error) => fail(&error),
    }
}

fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("minicrm: {error}");
    ExitCode::from(FAILED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_is_the_default_and_tools_are_subcommands() {
        let cli = Cli::try_parse_from(["minicrm", "--listen", "0.0.0.0:1"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.settings.listen, "0.0.0.0:1");
        let cli = Cli::try_parse_from(["minicrm", "check", "--repair", "--database-url", "x.db"])
            .unwrap();
        match cli.command {
            Some(Command::Check(args)) => {
                assert!(args.repair);
                assert_eq!(args.database_url, "x.db");
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["minicrm", "backup", "/tmp/copy.db"]).unwrap();
        match cli.command {
            Some(Command::Backup(args)) => assert_eq!(args.path, PathBuf::from("/tmp/copy.db")),
            other => panic!("{other:?}"),
        }
        assert!(
            Cli::try_parse_from(["minicrm", "backup"]).is_err(),
            "PATH is required"
        );
        assert!(Cli::try_parse_from(["minicrm", "frobnicate"]).is_err());
    }
}
