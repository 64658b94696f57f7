//! `Store::connect` against a real `redis-server` reached through a local
//! TCP proxy that can cut the connection: what a process starting during a
//! Redis restart meets.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use savestream_shared::config::{QueueConfig, RedisConfig};
use savestream_shared::store::{NewTask, Store};
use savestream_shared::task::{SourceKind, TaskId};
use savestream_testkit::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How many connections the proxy closes at once, unanswered, after it cut
/// the first one: a Redis that is down for a moment.
const REFUSED_AFTER_THE_CUT: usize = 6;

/// A proxy to `redis_port` that forwards the first connection until the
/// client sends `FUNCTION` (the library's load, which a store sends right
/// after connecting) and then closes it, closes the next
/// [`REFUSED_AFTER_THE_CUT`] connections as soon as they open, and forwards
/// every one after. Answers its port and the count of connections it took.
async fn cutting_proxy(redis_port: u16) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding the proxy");
    let port = listener.local_addr().expect("the proxy's address").port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let index = counted.fetch_add(1, Ordering::SeqCst);
            if (1..=REFUSED_AFTER_THE_CUT).contains(&index) {
                drop(client);
                continue;
            }
            let Ok(server) = TcpStream::connect(("127.0.0.1", redis_port)).await else {
                continue;
            };
            tokio::spawn(forward(client, server, index == 0));
        }
    });
    (port, accepted)
}

/// Copies bytes both ways until either side closes; with `cut`, closes both
/// instead of passing on a client's `FUNCTION` command.
async fn forward(client: TcpStream, server: TcpStream, cut: bool) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = async {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let read = match client_read.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => read,
            };
            let bytes = &buffer[..read];
            if cut
                && bytes
                    .windows(8)
                    .any(|window| window.eq_ignore_ascii_case(b"FUNCTION"))
            {
                return;
            }
            if server_write.write_all(bytes).await.is_err() {
                return;
            }
        }
    };
    let downstream = tokio::io::copy(&mut server_read, &mut client_write);
    // Whichever way ends first ends both: the halves drop with this task.
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
    }
}

#[tokio::test]
async fn a_redis_lost_while_the_library_loads_is_waited_for_and_then_used() {
    let redis = RedisServer::start();
    let (port, accepted) = cutting_proxy(redis.port()).await;

    let connected = tokio::time::timeout(
        Duration::from_secs(30),
        Store::connect(
            &RedisConfig {
                url: format!("redis://127.0.0.1:{port}"),
                prefix: "test".into(),
                startup_wait_seconds: 20,
            },
            &QueueConfig {
                lease_seconds: 30,
                retention_hours: 1,
            },
        ),
    )
    .await
    .expect("connecting did not hang");
    let store = connected.expect("the store waited out the cut and connected");

    assert!(
        accepted.load(Ordering::SeqCst) > REFUSED_AFTER_THE_CUT,
        "the proxy cut the first connection and refused {REFUSED_AFTER_THE_CUT} before this one"
    );
    store.ping().await.expect("the connected store answers");
    let new_task = NewTask {
        task_id: TaskId::generate(),
        source: SourceKind::Http,
        link: "https://example.com/a.bin".into(),
        user_id: 123456789,
        storage: "local1".into(),
        dir: "/".into(),
        title: "a.bin".into(),
    };
    let created = store
        .create(&new_task, None)
        .await
        .expect("the library loaded in the wait creates tasks");
    assert_eq!(created.task_id, new_task.task_id);
}
