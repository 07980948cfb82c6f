//! `minicrm check` and `minicrm backup`: tools for the database a server
//! uses (API.md, "Running"); the command line itself is in `config`.

use std::{path::PathBuf, process::ExitCode};

use clap::Args;

use crate::db::DatabaseUrl;

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// The database, as for serving.
    #[arg(long, env = "DATABASE_URL", default_value = "minicrm.db")]
    pub database_url: String,

    /// Recompute the operators' loads and the counters from the contacts, in
    /// one transaction (writers wait for it), then check again.
    #[arg(long)]
    pub repair: bool,
}

#[derive(Debug, Clone, Args)]
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
    use crate::config::{Cli, Command};
    use clap::Parser;

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
