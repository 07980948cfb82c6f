//! `minicrm backup PATH`: a consistent copy of a SQLite database, taken
//! while servers keep writing to it (`VACUUM INTO` reads one snapshot; in
//! WAL mode it blocks no writer). PostgreSQL has its own tool for this.

use std::path::Path;

use diesel::{QueryableByName, RunQueryDsl, sql_types::Text};

use super::{DatabaseUrl, DbConnection, connection::establish_for_tool};

/// What `backup` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(
        "minicrm backup copies SQLite databases only; for PostgreSQL use pg_dump \
         (for example: pg_dump --format=custom --file=minicrm.dump \"$DATABASE_URL\")"
    )]
    Postgres,
    #[error("{0}")]
    Failed(String),
}

#[derive(QueryableByName)]
struct Line {
    #[diesel(sql_type = Text)]
    line: String,
}

/// Copies the database at `url` into a new file at `target`, readable by
/// its owner only, and checks the copy. Refuses to overwrite a file.
/// Blocking.
pub fn backup(url: &DatabaseUrl, target: &Path) -> Result<Backup, BackupError> {
    let DatabaseUrl::Sqlite(source) = url else {
        return Err(BackupError::Postgres);
    };
    let failed = |what: String| BackupError::Failed(what);
    if !source.starts_with("file:") && !Path::new(source).exists() {
        return Err(failed(format!("{source}: no such database file")));
    }
    // An empty file is a valid target for VACUUM INTO; creating it here
    // makes it private whatever the umask, and never replaces a file.
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(target)
        .map_err(|error| failed(format!("{}: {error}", target.display())))?;
    let copied = copy(url, target);
    if copied.is_err() {
        let _ = std::fs::remove_file(target);
    }
    copied
}

fn copy(url: &DatabaseUrl, target: &Path) -> Result<Backup, BackupError> {
    let failed = |what: String| BackupError::Failed(what);
    let target_text = target
        .to_str()
        .ok_or_else(|| failed(format!("{}: not a UTF-8 path", target.display())))?;
    let mut connection = establish_for_tool(url).map_err(failed)?;
    let DbConnection::Sqlite(sqlite) = &mut connection else {
        return Err(BackupError::Postgres);
    };
    diesel::sql_query("VACUUM INTO ?")
        .bind::<Text, _>(target_text)
        .execute(sqlite)
        .map_err(|error| failed(format!("copying into {target_text}: {error}")))?;
    drop(connection);

    let copy = DatabaseUrl::Sqlite(target_text.to_owned());
    let mut connection = establish_for_tool(&copy).map_err(failed)?;
    let DbConnection::Sqlite(sqlite) = &mut connection else {
        return Err(BackupError::Postgres);
    };
    let lines: Vec<Line> =
        diesel::sql_query("SELECT integrity_check AS line FROM pragma_integrity_check")
            .load(sqlite)
            .map_err(|error| failed(format!("checking the copy: {error}")))?;
    if lines.iter().any(|line| line.line != "ok") {
        let report: Vec<String> = lines.into_iter().map(|line| line.line).collect();
        return Err(failed(format!(
            "the copy fails its integrity check: {}",
            report.join("; ")
        )));
    }
    let bytes = std::fs::metadata(target)
        .map_err(|error| failed(format!("{target_text}: {error}")))?
        .len();
    Ok(Backup { bytes })
}
