//! `minicrm check [--repair]` and `minicrm backup PATH`, run as the real
//! binary against a database a server is serving.

use std::{collections::BTreeSet, time::Duration};

use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl, SqliteConnection};
use minicrm::proto as pb;
use tonic::Code;

use crate::{
    helpers::{TestDb, phone_lead},
    load::{Call, Load, seed},
    server::{Server, tool},
};

crate::backend_tests!(
    check_finds_and_repair_recomputes_what_is_wrong,
    check_and_repair_run_while_the_server_writes,
);

/// Runs SQL on the test database behind the server's back.
fn execute(db: &TestDb, sql: &str) {
    use diesel::connection::SimpleConnection;
    let url = db.url();
    match url.strip_prefix("sqlite://") {
        Some(path) => SqliteConnection::establish(path)
            .expect("sqlite")
            .batch_execute(sql),
        None => PgConnection::establish(&url)
            .expect("postgres")
            .batch_execute(sql),
    }
    .expect(sql);
}

struct Checked {
    success: bool,
    code: Option<i32>,
    stdout: String,
}

fn check(db: &TestDb, repair: bool) -> Checked {
    let url = db.url();
    let mut args = vec!["check", "--database-url", &url];
    if repair {
        args.push("--repair");
    }
    let output = tool(&args);
    let checked = Checked {
        success: output.status.success(),
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
    };
    eprintln!(
        "minicrm check{} -> {:?}\n{}{}",
        if repair { " --repair" } else { "" },
        checked.code,
        checked.stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    checked
}

fn lines(stdout: &str, prefix: &str) -> usize {
    stdout
        .lines()
        .filter(|line| line.starts_with(prefix))
        .count()
}

async fn register(server: &Server, source_id: i64, index: usize) -> pb::Contact {
    server
        .contacts()
        .register_contact(pb::RegisterContactRequest {
            source: Some(pb::register_contact_request::Source::SourceId(source_id)),
            lead: Some(phone_lead(&format!("+1555{index:07}"))),
            request_id: format!("key-{index}"),
        })
        .await
        .expect("register")
        .into_inner()
        .contact
        .unwrap()
}

async fn check_finds_and_repair_recomputes_what_is_wrong(db: TestDb) {
    let server = Server::start(&db.url(), &[]).await;
    let source_id = seed(&server.channel, "bot", 3, 3).await;
    let (a, b, c) = (1, 2, 3);
    // Nine fill the three operators; two closes free two slots, which the
    // next two take; the last two wait: every operator holds 3, 2 pending.
    let mut contacts = Vec::new();
    for index in 0..9 {
        contacts.push(register(&server, source_id, index).await);
    }
    for contact in &contacts[..2] {
        server
            .contacts()
            .close_contact(pb::CloseContactRequest { id: contact.id })
            .await
            .expect("close");
    }
    for index in 9..13 {
        register(&server, source_id, index).await;
    }
    let checked = check(&db, false);
    assert!(checked.success, "a healthy database passes");
    assert!(checked.stdout.starts_with(
        "OK: every invariant and counter holds (3 operators, 1 sources, 13 contacts)"
    ));

    // Lowering a limit below the load and deactivating a busy operator
    // take nothing away, and break nothing.
    let mut operators = server.operators();
    operators
        .update_operator(pb::UpdateOperatorRequest {
            id: a,
            name: None,
            is_active: None,
            max_load: Some(1),
        })
        .await
        .expect("lower");
    operators
        .update_operator(pb::UpdateOperatorRequest {
            id: b,
            name: None,
            is_active: Some(false),
            max_load: None,
        })
        .await
        .expect("deactivate");
    assert_eq!(
        server
            .operators()
            .get_operator(pb::GetOperatorRequest { id: a })
            .await
            .unwrap()
            .into_inner()
            .active_load,
        3
    );
    assert!(
        check(&db, false).success,
        "lowered and deactivated: still fine"
    );

    // Counters out of step with the contacts: found, then recomputed.
    execute(
        &db,
        &format!(
            "UPDATE operators SET active_load = active_load + 2 WHERE id = {c}; \
             UPDATE pending_counts SET pending = pending + 7; \
             UPDATE contact_counts SET total = total + 1 WHERE operator_id = {a}"
        ),
    );
    let checked = check(&db, false);
    assert_eq!(checked.code, Some(1));
    assert_eq!(lines(&checked.stdout, "FAILED: "), 3, "{}", checked.stdout);
    assert!(checked.stdout.contains(&format!(
        "operator {c}: active_load is 5 but it has 3 ACTIVE contacts"
    )));
    assert!(
        checked
            .stdout
            .contains("pending_counts of source 1: 9 but 2 PENDING contacts")
    );
    assert!(
        checked
            .stdout
            .contains(&format!("contact_counts of operator {a} and source 1"))
    );
    let repaired = check(&db, true);
    assert!(repaired.success);
    assert_eq!(
        lines(&repaired.stdout, "repaired: "),
        3,
        "{}",
        repaired.stdout
    );
    assert!(check(&db, false).success, "repaired");
    assert_eq!(
        server
            .operators()
            .get_operator(pb::GetOperatorRequest { id: c })
            .await
            .unwrap()
            .into_inner()
            .active_load,
        3
    );

    // Breaches of the invariant: reported, never "repaired".
    execute(
        &db,
        &format!("UPDATE operators SET max_load = 1 WHERE id = {c}"),
    );
    let checked = check(&db, false);
    assert_eq!(checked.code, Some(1));
    assert!(checked.stdout.contains(&format!(
        "operator {c}: 3 ACTIVE contacts over its max_load 1"
    )));
    assert!(
        checked
            .stdout
            .contains("a contact was assigned beyond the limit")
    );
    let repaired = check(&db, true);
    assert_eq!(repaired.code, Some(1), "not repairable");
    execute(
        &db,
        &format!("UPDATE operators SET max_load = 3 WHERE id = {c}"),
    );
    execute(
        &db,
        &format!("UPDATE operators SET is_active = false WHERE id = {c}"),
    );
    let checked = check(&db, false);
    assert_eq!(checked.code, Some(1));
    assert!(
        checked
            .stdout
            .contains("a contact was assigned to an inactive operator")
    );
    execute(
        &db,
        &format!("UPDATE operators SET is_active = true WHERE id = {c}"),
    );
    assert!(check(&db, false).success);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_backup_while_serving_is_consistent_and_private() {
    use std::os::unix::fs::PermissionsExt;
    let db = TestDb::sqlite();
    let server = Server::start(&db.url(), &[]).await;
    let source_id = seed(&server.channel, "bot", 4, 1_000).await;
    let before = Load::start(&server.channel, source_id, "before", 4, 0)
        .stop_after(Duration::from_millis(500))
        .await;
    let acknowledged: BTreeSet<String> = before
        .iter()
        .filter(|record| record.code == Code::Ok)
        .filter_map(|record| match &record.call {
            Call::Register { request_id } => Some(request_id.clone()),
            _ => None,
        })
        .collect();

    // The copy is taken while writes go on.
    let during = Load::start(&server.channel, source_id, "during", 4, 0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("copy.db");
    let copy_path = copy.display().to_string();
    let url = db.url();
    let output = tool(&["backup", "--database-url", &url, &copy_path]);
    let during = during.stop().await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mode = std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    #[derive(QueryableByName)]
    struct Key {
        #[diesel(sql_type = diesel::sql_types::Text)]
        request_id: String,
    }
    let keys: Vec<Key> =
        diesel::sql_query("SELECT request_id FROM contacts WHERE request_id IS NOT NULL")
            .load(&mut SqliteConnection::establish(&copy_path).unwrap())
            .unwrap();
    let copied: BTreeSet<String> = keys.into_iter().map(|key| key.request_id).collect();
    let missing: Vec<_> = acknowledged.difference(&copied).collect();
    let copied_during = copied
        .iter()
        .filter(|key| key.starts_with("during"))
        .count();
    eprintln!(
        "backup while serving: {} bytes; {} contacts in the copy: all {} acknowledged before it, \
         and {copied_during} of {} calls made while it ran",
        std::fs::metadata(&copy).unwrap().len(),
        copied.len(),
        acknowledged.len(),
        during.len()
    );
    assert!(missing.is_empty(), "missing from the copy: {missing:?}");
    assert!(!acknowledged.is_empty());
    let checked = tool(&["check", "--database-url", &copy_path]);
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stdout)
    );

    let again = tool(&["backup", "--database-url", &url, &copy_path]);
    assert_eq!(again.status.code(), Some(2), "never overwrites");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backup_points_to_pg_dump() {
    crate::helpers::on_postgres(|db| async move {
        let _server = Server::start(&db.url(), &[]).await;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("copy.db").display().to_string();
        let output = tool(&["backup", "--database-url", &db.url(), &target]);
        assert_eq!(output.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&output.stderr).contains("pg_dump"));
        assert!(!std::path::Path::new(&target).exists());
    })
    .await;
}

/// `check` reads one snapshot and `--repair` holds writers off while it
/// works: both pass while calls keep writing, and the calls only wait.
async fn check_and_repair_run_while_the_server_writes(db: TestDb) {
    let server = Server::start(&db.url(), &[]).await;
    let source_id = seed(&server.channel, "bot", 4, 20).await;
    let load = Load::start(&server.channel, source_id, "busy", 6, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let url = db.url();
    let mut runs = Vec::new();
    for repair in [false, true, false, true] {
        let mut args = vec!["check", "--database-url", url.as_str()];
        if repair {
            args.push("--repair");
        }
        let started = std::time::Instant::now();
        let output = tokio::task::spawn_blocking({
            let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
            move || tool(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "check{} under load: {stdout}{}",
            if repair { " --repair" } else { "" },
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!stdout.contains("repaired:"), "nothing to repair: {stdout}");
        runs.push(started.elapsed());
    }
    let records = load.stop().await;
    let slowest = records
        .iter()
        .map(|record| record.latency)
        .max()
        .unwrap_or_default();
    eprintln!(
        "check, check --repair, check, check --repair under load: took {runs:?}; {} calls \
         meanwhile {:?}, the slowest {slowest:?}",
        records.len(),
        crate::load::codes(&records)
    );
    assert!(
        records.iter().all(|record| record.code == Code::Ok),
        "{:?}",
        crate::load::codes(&records)
    );
    assert!(tool(&["check", "--database-url", &url]).status.success());
}
