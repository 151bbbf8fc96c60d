use super::*;

fn live(current: Config) -> Live {
    Live {
        reload: Reload {
            loader: None,
            logging: None,
        },
        current,
        security: None,
        oplog: None,
    }
}

#[test]
fn changed_keys_are_dotted_and_sorted() {
    let old = Config::default();
    let mut new = old.clone();
    new.log.level = "debug".into();
    new.cache.memory_budget = sluice_engine::ByteSize(1 << 30);
    new.server.limits.max_connections += 1;
    assert_eq!(
        changed_keys(&old, &new),
        [
            "cache.memory_budget",
            "log.level",
            "server.limits.max_connections"
        ]
    );
    assert!(changed_keys(&old, &old.clone()).is_empty());
}

#[test]
fn what_cannot_be_applied_needs_a_restart_and_stays_as_running() {
    let old = Config::default();
    let mut l = live(old.clone());
    let mut new = old.clone();
    new.cache.memory_budget = sluice_engine::ByteSize(1 << 30);
    // No logging to re-level here: log.level is not applied either.
    new.log.level = "debug".into();
    let outcome = l.apply(new.clone());
    assert!(outcome.applied.is_empty());
    assert_eq!(outcome.need_restart, ["cache.memory_budget", "log.level"]);
    // Still as running: the next reload says the same.
    assert_eq!(l.apply(new).need_restart.len(), 2);
    assert_eq!(l.current.cache.memory_budget, old.cache.memory_budget);
}

#[test]
fn applied_keys_become_current() {
    let mut l = live(Config::default());
    let (tx, rx) = std::sync::mpsc::channel();
    l.oplog = Some(Arc::new(move |on| {
        tx.send(on).unwrap();
        Ok(())
    }));
    let mut new = Config::default();
    let mut values = value_of(&new);
    values.insert("oplog.enabled".into(), toml::Value::Boolean(true));
    new = rebuild(&values).unwrap();
    let outcome = l.apply(new.clone());
    assert_eq!(outcome.applied, ["oplog.enabled"]);
    assert!(rx.recv().unwrap());
    assert!(l.apply(new).applied.is_empty(), "already current");
}

#[test]
fn a_config_survives_the_dotted_round_trip() {
    let mut config = Config::default();
    config.server.tcp = Some("127.0.0.1:7420".parse().unwrap());
    config.storage.file.roots = vec!["/data".into()];
    config.log.level = "warn".into();
    let back = rebuild(&value_of(&config)).unwrap();
    assert!(changed_keys(&config, &back).is_empty());
    assert_eq!(back.server.tcp, config.server.tcp);
}
