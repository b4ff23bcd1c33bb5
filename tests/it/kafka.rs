//! Consumer-group behaviour through the real broker, with Sluice's consumer settings.

use std::{
    collections::{BTreeSet, HashSet},
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use futures::StreamExt;
use rdkafka::{
    Message,
    consumer::{CommitMode, Consumer},
};
use sluice_core::kafka::{self, SluiceConsumer};
use sluice_testkit::{TestEnv, eventually};
use tokio::sync::mpsc;

use crate::support::{create_topic, produce};

/// A received message: (partition, payload).
type Received = (i32, String);

/// Polls `consumer` forever in a task, forwarding what arrives (polling also keeps it in the group).
fn drain(consumer: Arc<kafka::ClosesInBackground<SluiceConsumer>>) -> mpsc::UnboundedReceiver<Received> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = consumer.stream();
        while let Some(Ok(message)) = stream.next().await {
            let payload = String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned();
            consumer.store_offset_from_message(&message).expect("store offset");
            if tx.send((message.partition(), payload)).is_err() {
                break;
            }
        }
    });
    rx
}

fn assigned(consumer: &SluiceConsumer) -> BTreeSet<i32> {
    consumer.assignment().map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect()).unwrap_or_default()
}

async fn recv_one(rx: &mut mpsc::UnboundedReceiver<Received>, within: Duration) -> Option<Received> {
    tokio::time::timeout(within, rx.recv()).await.ok().flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_in_one_group_split_partitions_and_see_each_message_once() {
    let env = TestEnv::new().await;
    let topic = create_topic(&env, "split", 12).await;
    let a = Arc::new(kafka::consumer(&env.config.kafka, "split-group").expect("consumer a"));
    let b = Arc::new(kafka::consumer(&env.config.kafka, "split-group").expect("consumer b"));
    a.subscribe(&[&topic]).expect("subscribe a");
    b.subscribe(&[&topic]).expect("subscribe b");
    let mut rx_a = drain(a.clone());
    let mut rx_b = drain(b.clone());

    let (parts_a, parts_b) = eventually(Duration::from_secs(30), "both members to share 12 partitions", || {
        let (pa, pb) = (assigned(&a), assigned(&b));
        async move { (!pa.is_empty() && !pb.is_empty() && pa.len() + pb.len() == 12).then_some((pa, pb)) }
    })
    .await;
    assert!(parts_a.is_disjoint(&parts_b), "overlapping assignments {parts_a:?} {parts_b:?}");

    let producer = kafka::producer(&env.config.kafka).expect("producer");
    let messages: Vec<_> = (0..120).map(|i| (i % 12, format!("m{i}"))).collect();
    produce(&producer, &topic, &messages).await;

    let mut seen = HashSet::new();
    let (mut count_a, mut count_b) = (0, 0);
    while seen.len() < 120 {
        tokio::select! {
            Some((partition, payload)) = rx_a.recv() => {
                assert!(parts_a.contains(&partition), "a got partition {partition} outside {parts_a:?}");
                assert!(seen.insert(payload.clone()), "{payload} delivered twice");
                count_a += 1;
            }
            Some((partition, payload)) = rx_b.recv() => {
                assert!(parts_b.contains(&partition), "b got partition {partition} outside {parts_b:?}");
                assert!(seen.insert(payload.clone()), "{payload} delivered twice");
                count_b += 1;
            }
            () = tokio::time::sleep(Duration::from_secs(20)) => panic!("only {} of 120 messages arrived", seen.len()),
        }
    }
    assert!(count_a > 0 && count_b > 0, "both members worked: a={count_a} b={count_b}");
}

/// One consumer of `group` on a one-partition topic; returns the first message it receives.
async fn first_message(env: &TestEnv, topic: &str, group: &str, commit: bool) -> String {
    let consumer = kafka::consumer(&env.config.kafka, group).expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let message = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
        .await
        .expect("a message within 20 s")
        .expect("receive");
    let payload = String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned();
    if commit {
        consumer.store_offset_from_message(&message).expect("store offset");
        consumer.commit_consumer_state(CommitMode::Sync).expect("commit");
    }
    payload
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncommitted_message_is_redelivered_and_a_committed_one_is_not() {
    let env = TestEnv::new().await;
    let topic = create_topic(&env, "redeliver", 1).await;
    let producer = kafka::producer(&env.config.kafka).expect("producer");
    produce(&producer, &topic, &[(0, "first".into())]).await;

    assert_eq!(first_message(&env, &topic, "g", false).await, "first");
    assert_eq!(
        first_message(&env, &topic, "g", true).await,
        "first",
        "a message whose offset was never stored is delivered again to the next member"
    );
    produce(&producer, &topic, &[(0, "second".into())]).await;
    assert_eq!(first_message(&env, &topic, "g", false).await, "second", "a committed message is not delivered again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_killed_with_sigkill_has_its_partitions_taken_over() {
    let env = TestEnv::new().await;
    let topic = create_topic(&env, "takeover", 12).await;

    // The other member is a separate `sluice tail --group` process, so it can be SIGKILLed.
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["tail", "takeover", "--group", "takeover-group"])
        .env("SLUICE_KAFKA_BROKERS", &env.config.kafka.brokers)
        .env("SLUICE_KAFKA_TOPIC_PREFIX", &env.config.kafka.topic_prefix)
        .env("SLUICE_KAFKA_SESSION_TIMEOUT_MS", "6000")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn sluice tail");
    let (line_tx, mut child_lines) = mpsc::unbounded_channel::<String>();
    let stdout = child.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });

    let survivor = Arc::new(kafka::consumer(&env.config.kafka, "takeover-group").expect("consumer"));
    survivor.subscribe(&[&topic]).expect("subscribe");
    let mut rx = drain(survivor.clone());
    let mine = eventually(Duration::from_secs(30), "the group to split between the two processes", || {
        let parts = assigned(&survivor);
        async move { (!parts.is_empty() && parts.len() < 12).then_some(parts) }
    })
    .await;

    let producer = kafka::producer(&env.config.kafka).expect("producer");
    produce(&producer, &topic, &(0..12).map(|p| (p, format!("before-{p}"))).collect::<Vec<_>>()).await;
    let (mut by_child, mut by_survivor) = (0, 0);
    while by_child + by_survivor < 12 {
        tokio::select! {
            Some(line) = child_lines.recv() => {
                let value: serde_json::Value = serde_json::from_str(&line).expect("tail prints JSON lines");
                let partition = value["partition"].as_i64().expect("partition") as i32;
                assert!(!mine.contains(&partition), "child printed partition {partition} owned by the survivor");
                by_child += 1;
            }
            Some((partition, _)) = rx.recv() => {
                assert!(mine.contains(&partition));
                by_survivor += 1;
            }
            () = tokio::time::sleep(Duration::from_secs(20)) => panic!("only {} of 12 messages arrived", by_child + by_survivor),
        }
    }
    assert_eq!(by_child, 12 - mine.len(), "the child consumed exactly its own partitions");

    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");
    eventually(Duration::from_secs(40), "the survivor to own all 12 partitions", || {
        let count = assigned(&survivor).len();
        async move { (count == 12).then_some(()) }
    })
    .await;

    produce(&producer, &topic, &(0..12).map(|p| (p, format!("after-{p}"))).collect::<Vec<_>>()).await;
    let mut after = BTreeSet::new();
    while after.len() < 12 {
        let (partition, payload) = recv_one(&mut rx, Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("survivor got only partitions {after:?} after the takeover"));
        if payload.starts_with("after-") {
            after.insert(partition);
        }
    }
}

/// The one work loop: four in flight, a slow item does not hold the others, two messages of one
/// key never run at once, and the partition's offset is committed only past finished items.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_work_loop_lets_no_slow_item_hold_the_rest_and_commits_only_past_finished_ones() {
    use std::sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    };

    use rdkafka::producer::FutureRecord;
    use sluice_core::work;

    let env = TestEnv::new().await;
    let topic = create_topic(&env, "work", 1).await;
    let producer = kafka::producer(&env.config.kafka).expect("producer");
    for i in 0..12 {
        let payload = i.to_string();
        let key = if i == 5 || i == 6 { "same".to_owned() } else { format!("k{i}") };
        let record = FutureRecord::to(&topic).partition(0).key(&key).payload(&payload);
        producer.send(record, Duration::from_secs(10)).await.expect("produce");
    }
    let group = format!("{topic}-group");
    let consumer = Arc::new(kafka::consumer(&env.config.kafka, &group).expect("consumer"));
    consumer.subscribe(&[&topic]).expect("subscribe");
    let shutdown = sluice_core::Shutdown::new();
    let release = Arc::new(tokio::sync::Notify::new());
    let finished = Arc::new(Mutex::new(Vec::<u32>::new()));
    let (same_running, same_overlap) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let worker = {
        let (consumer, shutdown, release, finished) =
            (consumer.clone(), shutdown.clone(), release.clone(), finished.clone());
        let (same_running, same_overlap) = (same_running.clone(), same_overlap.clone());
        tokio::spawn(async move {
            work::consume(&consumer, &shutdown, 4, |message| {
                let payload = String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned();
                let item: u32 = payload.parse().expect("a number");
                let (release, finished) = (release.clone(), finished.clone());
                let (same_running, same_overlap) = (same_running.clone(), same_overlap.clone());
                async move {
                    match item {
                        0 => release.notified().await,
                        5 | 6 => {
                            if same_running.fetch_add(1, Ordering::SeqCst) > 0 {
                                same_overlap.fetch_add(1, Ordering::SeqCst);
                            }
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            same_running.fetch_sub(1, Ordering::SeqCst);
                        }
                        _ => {}
                    }
                    finished.lock().expect("lock").push(item);
                    true
                }
            })
            .await
        })
    };
    eventually(Duration::from_secs(30), "the eleven quick items", || {
        let done = finished.lock().expect("lock").len();
        async move { (done == 11).then_some(()) }
    })
    .await;
    assert!(!finished.lock().expect("lock").contains(&0), "item 0 is still running");
    assert_eq!(same_overlap.load(Ordering::SeqCst), 0, "two messages of one key ran at once");
    // Past the auto-commit interval, nothing is committed: the first item has not finished.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let position = kafka::group_positions(&env.config.kafka, &group, &topic).await.expect("positions")[&0];
    assert!(position.committed.unwrap_or(0) == 0, "committed past an unfinished item: {position:?}");
    release.notify_one();
    eventually(Duration::from_secs(15), "the offset past all twelve", || async {
        let positions = kafka::group_positions(&env.config.kafka, &group, &topic).await.ok()?;
        (positions[&0].committed == Some(12)).then_some(())
    })
    .await;
    shutdown.cancel();
    worker.await.expect("worker").expect("consume ended cleanly");
}

/// What [`idle_consumer`] gives: its payloads, whether it is paused, how many checks it made while
/// paused, the topic and the settings.
struct IdleConsumer {
    received: mpsc::UnboundedReceiver<String>,
    paused: tokio::sync::watch::Receiver<bool>,
    checks: Arc<std::sync::atomic::AtomicUsize>,
    topic: String,
    config: sluice_core::config::KafkaConfig,
}

/// A consumer of a new topic of `partitions` with idle-pause settings `pause_ms`, `check_ms` and
/// `check_max_ms`, driven like the work loop.
async fn idle_consumer(
    env: &TestEnv,
    name: &str,
    partitions: i32,
    (pause_ms, check_ms, check_max_ms): (u64, u32, u32),
) -> IdleConsumer {
    let topic = create_topic(env, name, partitions).await;
    let mut config = env.config.kafka.clone();
    (config.idle_pause_ms, config.idle_check_ms, config.idle_check_max_ms) = (pause_ms, check_ms, check_max_ms);
    let consumer = Arc::new(kafka::consumer(&config, &format!("{topic}-group")).expect("consumer"));
    consumer.subscribe(&[&topic]).expect("subscribe");
    let (tx, rx) = mpsc::unbounded_channel();
    let (paused_tx, paused_rx) = tokio::sync::watch::channel(false);
    let checks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = checks.clone();
    tokio::spawn(async move {
        let mut stream = consumer.stream();
        let mut idle = sluice_core::idle::IdlePause::new(&consumer);
        loop {
            tokio::select! {
                check = idle.wait() => if check {
                    if idle.is_paused() {
                        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    idle.check(true).await;
                },
                next = stream.next() => {
                    let Some(Ok(message)) = next else { break };
                    idle.received(&message);
                    let payload = String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned();
                    consumer.store_offset_from_message(&message).expect("store offset");
                    if tx.send(payload).is_err() {
                        break;
                    }
                }
            }
            paused_tx.send_replace(idle.is_paused());
        }
    });
    IdleConsumer { received: rx, paused: paused_rx, checks, topic: topic.clone(), config }
}

/// Publishes `payload` to `partition` with rdkafka's own producer, as another process would: it
/// rings no doorbell and announces nothing here.
async fn publish_elsewhere(producer: &rdkafka::producer::FutureProducer, topic: &str, partition: i32, payload: &str) {
    let record = rdkafka::producer::FutureRecord::<(), _>::to(topic).partition(partition).payload(payload);
    producer.send(record, Duration::from_secs(10)).await.map_err(|(err, _)| err).expect("produce elsewhere");
}

async fn until_paused(paused: &mut tokio::sync::watch::Receiver<bool>, within: Duration, what: &str) {
    tokio::time::timeout(within, paused.wait_for(|p| *p)).await.unwrap_or_else(|_| panic!("{what}")).expect("loop");
}

/// An idle consumer pauses its fetches (the local broker reads every partition of a held fetch on
/// a timer) and still gets everything: an event another process publishes is found by a check of
/// the partitions' ends, and after each one it pauses again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_consumer_pauses_and_a_check_finds_what_another_process_published() {
    let env = TestEnv::new().await;
    // Checks at a steady pace (no growing wait), so each round's timing is known.
    let IdleConsumer { mut received, mut paused, topic, config, .. } =
        idle_consumer(&env, "idle-check", 3, (1_000, 200, 200)).await;
    let producer: rdkafka::producer::FutureProducer = kafka::client_config(&config).create().expect("producer");
    publish_elsewhere(&producer, &topic, 0, "before").await;
    assert_eq!(recv_one_payload(&mut received, Duration::from_secs(30)).await.as_deref(), Some("before"));
    until_paused(&mut paused, Duration::from_secs(20), "the consumer pauses once idle").await;
    for (round, partition) in [(1, 1), (2, 2), (3, 0)] {
        let payload = format!("while paused {round}");
        publish_elsewhere(&producer, &topic, partition, &payload).await;
        let got = recv_one_payload(&mut received, Duration::from_secs(10)).await;
        assert_eq!(got.as_deref(), Some(payload.as_str()), "round {round}: a check resumes the consumer");
        until_paused(&mut paused, Duration::from_secs(20), "it pauses again").await;
    }
    assert!(recv_one_payload(&mut received, Duration::from_millis(500)).await.is_none(), "nothing twice");
}

/// What this process publishes to a paused consumer's topic (with Sluice's producer) wakes it
/// without waiting for a check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_consumer_wakes_when_its_own_process_publishes() {
    let env = TestEnv::new().await;
    // Checks every 6 s: the pause happens at the second tick, and the next check is 6 s later.
    let IdleConsumer { mut received, mut paused, topic, config, .. } =
        idle_consumer(&env, "idle-bell", 2, (1_000, 6_000, 6_000)).await;
    until_paused(&mut paused, Duration::from_secs(30), "the consumer pauses once idle").await;
    let producer = kafka::producer(&config).expect("producer");
    let started = std::time::Instant::now();
    // Sluice's producer rings this process's doorbell for the topic once the broker has the event.
    produce(&producer, &topic, &[(1, "rung".into())]).await;
    let got = recv_one_payload(&mut received, Duration::from_secs(4)).await;
    assert_eq!(got.as_deref(), Some("rung"), "woken by the doorbell, not by the check 6 s later");
    eprintln!("received {:?} after publishing", started.elapsed());
}

/// Another Sluice process's publish wakes a paused consumer here without waiting for a check:
/// every process announces the topics it published to on PostgreSQL (`NOTIFY sluice_published`)
/// and rings its own consumers' bells for what the others announce. Both halves, each against a
/// real PostgreSQL: this process hears an announcement, and announces what it publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_consumer_wakes_when_another_sluice_process_publishes() {
    use sluice_core::idle;
    let env = TestEnv::new().await;
    // Checks every 6 s: the next check is 6 s after the pause.
    let IdleConsumer { mut received, mut paused, topic, config, .. } =
        idle_consumer(&env, "idle-shared", 2, (1_000, 6_000, 6_000)).await;
    let pool = sluice_core::db::pool(&env.config.database).expect("pool");
    let shutdown = sluice_core::Shutdown::new();
    tokio::spawn(idle::share_doorbells(pool.clone(), env.config.database.clone(), shutdown.clone()));
    // Another process's connection, listening as every Sluice process does.
    let (other, mut connection) = sluice_core::db::connect(&env.config.database).await.expect("connect");
    let (announced_tx, mut announced) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = announced_tx.send(n.payload().to_owned());
            }
        }
    });
    other.batch_execute(&format!("LISTEN {}", idle::CHANNEL)).await.expect("listen");
    until_paused(&mut paused, Duration::from_secs(30), "the consumer pauses once idle").await;

    // Hearing: the other process publishes (rdkafka's own producer rings nothing here) and
    // announces the topic.
    let producer: rdkafka::producer::FutureProducer = kafka::client_config(&config).create().expect("producer");
    publish_elsewhere(&producer, &topic, 0, "from elsewhere").await;
    let started = std::time::Instant::now();
    other.execute("SELECT pg_notify($1, $2)", &[&idle::CHANNEL, &topic]).await.expect("notify");
    let got = recv_one_payload(&mut received, Duration::from_secs(4)).await;
    assert_eq!(got.as_deref(), Some("from elsewhere"), "woken by the announcement, not by the check 6 s later");
    eprintln!("received {:?} after the announcement", started.elapsed());
    while announced.try_recv().is_ok() {}

    // Announcing: what Sluice's producer publishes here is announced to the others.
    let sluice_producer = kafka::producer(&config).expect("producer");
    produce(&sluice_producer, &topic, &[(1, "from here".into())]).await;
    let heard = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(name) = announced.recv().await {
            if name == topic {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(heard, Ok(true), "the topic is announced on {}", idle::CHANNEL);
    shutdown.cancel();
}

/// The longer a paused consumer idles, the less often it checks (each check costs the broker a
/// read per partition): the wait doubles from `idle_check_ms` up to `idle_check_max_ms`, and
/// starts over once something arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_consumer_checks_less_often_the_longer_it_idles() {
    use std::sync::atomic::Ordering;
    let env = TestEnv::new().await;
    let IdleConsumer { mut received, mut paused, checks, topic, config } =
        idle_consumer(&env, "idle-backoff", 2, (1_000, 200, 1_600)).await;
    until_paused(&mut paused, Duration::from_secs(30), "the consumer pauses once idle").await;
    // Checks after 0.2, 0.6, 1.4, 3.0, 4.6, 6.2 and 7.8 s: 7 in 8 s, where a steady 200 ms gives 40.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let made = checks.load(Ordering::SeqCst);
    // Each check is a broker round trip that a busy machine slows down (the next wait starts
    // after it), so fewer is fine; many more would mean no back-off.
    assert!((2..=12).contains(&made), "{made} checks in 8 s paused (7 expected)");
    let producer: rdkafka::producer::FutureProducer = kafka::client_config(&config).create().expect("producer");
    let started = std::time::Instant::now();
    publish_elsewhere(&producer, &topic, 1, "late").await;
    let got = recv_one_payload(&mut received, Duration::from_secs(6)).await;
    assert_eq!(got.as_deref(), Some("late"), "found within the longest wait");
    eprintln!("received {:?} after publishing, {made} checks in 8 s paused", started.elapsed());
    // Paused again, it starts over from the short wait.
    until_paused(&mut paused, Duration::from_secs(30), "it pauses again").await;
    let before = checks.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let after = checks.load(Ordering::SeqCst) - before;
    assert!(
        (1..=4).contains(&after),
        "{after} checks in the first 1.2 s of the new pause (2 expected: at 0.2 and 0.6 s; none if the wait stayed long)"
    );
}

async fn recv_one_payload(rx: &mut mpsc::UnboundedReceiver<String>, within: Duration) -> Option<String> {
    tokio::time::timeout(within, rx.recv()).await.ok().flatten()
}

/// Readiness asks the broker about one topic every 10 s from every process; the broker creates a
/// missing topic a client names unless the client says not to, and Sluice's topics must keep the
/// partition counts and configs it creates them with. So a probe (or anything else on Sluice's
/// producer) naming a missing topic leaves it missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reachability_probe_answers_for_a_missing_topic_without_creating_it() {
    let env = TestEnv::new().await;
    let producer = kafka::producer(&env.config.kafka).expect("producer");
    let missing = env.topic("never-created");
    let brokers = kafka::check_reachable(&producer, Some(&missing), Duration::from_secs(5)).await;
    assert_eq!(brokers, Ok(1), "the cluster answers about a topic it does not have");
    let metadata = producer.fetch_metadata(None, Duration::from_secs(5)).expect("metadata");
    let names: Vec<&str> = metadata.topics().iter().map(|t| t.name()).collect();
    assert!(!names.contains(&missing.as_str()), "the probe created {missing}");
}
