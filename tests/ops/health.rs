//! `minicrm health [--addr ADDR]`: exit 0 when the server answers SERVING.

use std::process::Output;

use crate::{child, server::Server, test_db::TestDb};

fn health(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = child::command();
    command.arg("health").args(args);
    for (name, value) in envs {
        command.env(name, value);
    }
    command.output().expect("run minicrm health")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_exits_zero_only_when_the_server_answers_serving() {
    let db = TestDb::sqlite();
    let server = Server::start(&db.url(), &[], &[]);

    let serving = health(&["--addr", &server.grpc], &[]);
    assert!(serving.status.success(), "{serving:?}");
    assert_eq!(String::from_utf8_lossy(&serving.stdout).trim(), "SERVING");

    // The default address is the server's own --listen (MINICRM_LISTEN),
    // asked on loopback when it names every interface.
    let port = server.grpc.rsplit_once(':').unwrap().1;
    let all_interfaces = format!("0.0.0.0:{port}");
    let from_env = health(&[], &[("MINICRM_LISTEN", &all_interfaces)]);
    assert!(from_env.status.success(), "{from_env:?}");

    // A service the server does not serve: NOT_FOUND, so not healthy.
    let unknown = health(
        &[
            "--addr",
            &server.grpc,
            "--service",
            "minicrm.v1.NoSuchService",
        ],
        &[],
    );
    assert_eq!(unknown.status.code(), Some(1), "{unknown:?}");

    let (status, _) = server.stop();
    assert!(status.success());
    // Nobody listens any more.
    let stopped = health(&["--addr", &all_interfaces, "--timeout", "2"], &[]);
    assert_eq!(stopped.status.code(), Some(1), "{stopped:?}");
    assert!(
        String::from_utf8_lossy(&stopped.stderr).contains("cannot connect"),
        "{stopped:?}"
    );
}
