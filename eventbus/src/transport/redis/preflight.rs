//! The start-up permission check: every command the bus will run is tried with `ACL DRYRUN`
//! (Redis 7+) under the connection's user, with the real keys and channels of this namespace, so a
//! missing ACL rule is one clear error from `build()` that lists every missing permission and the
//! minimal ACL, instead of a surprise at the first claim or dead letter.
//!
//! The check needs `ACL WHOAMI` and `ACL DRYRUN` themselves (`+acl|whoami +acl|dryrun`, part of
//! the minimal ACL). When they are denied or unknown (Redis 6, managed services that rename or
//! hide `ACL`), the check is skipped with a log line and the bus starts as before: a denied
//! command is then an [`Error::Permission`] when it is first used.
//!
//! What is checked depends on the bus: for each durable handler, the commands of its reader on
//! its stream, group and consumer, of its dead letters and of its attempt counts; for each
//! broadcast handler, `SUBSCRIBE` and `PUBLISH` on its channel and the dead-letter commands; for a
//! publish-only bus (`.handlers([])`), only `XADD`/`PUBLISH` for every registered event, and
//! `PING`: it may link event types it never publishes, so it fails only when it may publish
//! none of them, and warns about each other denial. Optional commands (`CLIENT ID`/`UNBLOCK`,
//! `CONFIG GET`, `XGROUP DELCONSUMER`) are logged when denied and never fail start-up.

use std::collections::BTreeMap;

use redis::Value;
use redis::aio::ConnectionLike;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::event::{Delivery, EventRegistration};
use crate::transport;
use crate::transport::Route;

/// The rules of the minimal ACL, in the order the README lists them, without the key and channel
/// patterns (`~<ns>:*`, `resetchannels &<ns>:*`). The last ones are optional.
pub(crate) const MINIMAL_RULES: &[&str] = &[
    "-@all",
    "+xadd",
    "+xreadgroup",
    "+xack",
    "+xautoclaim",
    "+xclaim",
    "+xpending",
    "+xgroup|create",
    "+xinfo|groups",
    "+xinfo|stream",
    "+xrange",
    "+xdel",
    "+xlen",
    "+hincrby",
    "+hmget",
    "+hdel",
    "+evalsha",
    "+eval",
    "+multi",
    "+exec",
    "+ping",
    "+scan",
    "+del",
    "+publish",
    "+subscribe",
    "+acl|whoami",
    "+acl|dryrun",
    // Optional:
    "+client|id",
    "+client|unblock",
    "+config|get",
    "+xgroup|delconsumer",
];

/// The minimal ACL for a user of one namespace, as one `ACL SETUSER` line.
pub(crate) fn minimal_acl(user: &str, namespace: &str) -> String {
    format!(
        "ACL SETUSER {user} on >PASSWORD ~{namespace}:* resetchannels &{namespace}:* {}",
        MINIMAL_RULES.join(" ")
    )
}

/// Where a command's argument comes from.
#[derive(Debug, Clone, Copy)]
enum Arg {
    /// Literal text.
    Lit(&'static str),
    /// The event's stream, `<ns>:{<event>}`.
    Stream,
    /// The event's dead letters, `<ns>:{<event>}:dlq`.
    Dlq,
    /// The event's attempt counts, `<ns>:{<event>}:attempts`.
    Attempts,
    /// A field of the attempt counts: `<entry id> <handler>`.
    AttemptsField,
    /// The broadcast event's channel, `<ns>:<event>`.
    Channel,
    /// The handler's consumer group (the handler name).
    Group,
    /// This bus's consumer name.
    Consumer,
    /// A `SCAN MATCH` pattern of the namespace.
    NamespacePattern,
    /// A script hash (any 40 hex digits: DRYRUN checks the command and keys, not the script).
    Sha,
}

use Arg::{
    Attempts, AttemptsField, Channel, Consumer, Dlq, Group, Lit, NamespacePattern, Sha, Stream,
};

/// One command the bus runs, with the ACL rule that grants it.
struct Command {
    /// The command's name, for messages (`XAUTOCLAIM`, `XGROUP CREATE`).
    name: &'static str,
    /// The rule in [`MINIMAL_RULES`] that grants it.
    rule: &'static str,
    args: &'static [Arg],
    /// What the bus needs it for.
    purpose: &'static str,
    /// Denied optional commands are logged, not fatal.
    optional: bool,
}

const fn req(
    name: &'static str,
    rule: &'static str,
    args: &'static [Arg],
    purpose: &'static str,
) -> Command {
    Command {
        name,
        rule,
        args,
        purpose,
        optional: false,
    }
}

const fn opt(
    name: &'static str,
    rule: &'static str,
    args: &'static [Arg],
    purpose: &'static str,
) -> Command {
    Command {
        name,
        rule,
        args,
        purpose,
        optional: true,
    }
}

/// Dead letters of one event: written (a script in the event's slot), listed, replayed, removed,
/// purged.
const DEAD_LETTERS: &[Command] = &[
    req(
        "XADD",
        "+xadd",
        &[Lit("XADD"), Dlq, Lit("*"), Lit("envelope"), Lit("{}")],
        "write dead letters",
    ),
    req(
        "XRANGE",
        "+xrange",
        &[
            Lit("XRANGE"),
            Dlq,
            Lit("-"),
            Lit("+"),
            Lit("COUNT"),
            Lit("1"),
        ],
        "list and replay dead letters",
    ),
    req(
        "XDEL",
        "+xdel",
        &[Lit("XDEL"), Dlq, Lit("0-1")],
        "remove replayed dead letters",
    ),
    req(
        "XLEN",
        "+xlen",
        &[Lit("XLEN"), Dlq],
        "count dead letters when purging",
    ),
    req("DEL", "+del", &[Lit("DEL"), Dlq], "purge dead letters"),
    req(
        "MULTI",
        "+multi",
        &[Lit("MULTI")],
        "purge dead letters (count and delete in one step)",
    ),
    req(
        "EXEC",
        "+exec",
        &[Lit("EXEC")],
        "purge dead letters (count and delete in one step)",
    ),
    req(
        "SCAN",
        "+scan",
        &[
            Lit("SCAN"),
            Lit("0"),
            Lit("MATCH"),
            NamespacePattern,
            Lit("COUNT"),
            Lit("1"),
            Lit("TYPE"),
            Lit("stream"),
        ],
        "find the namespace's dead letters",
    ),
    req("PING", "+ping", &[Lit("PING")], "probe the connection"),
];

/// The reader of one durable handler.
const DURABLE: &[Command] = &[
    req(
        "XGROUP CREATE",
        "+xgroup|create",
        &[
            Lit("XGROUP"),
            Lit("CREATE"),
            Stream,
            Group,
            Lit("0"),
            Lit("MKSTREAM"),
        ],
        "create the handler's consumer group",
    ),
    req(
        "XREADGROUP",
        "+xreadgroup",
        &[
            Lit("XREADGROUP"),
            Lit("GROUP"),
            Group,
            Consumer,
            Lit("COUNT"),
            Lit("1"),
            Lit("BLOCK"),
            Lit("1"),
            Lit("STREAMS"),
            Stream,
            Lit(">"),
        ],
        "read events",
    ),
    req(
        "XACK",
        "+xack",
        &[Lit("XACK"), Stream, Group, Lit("0-1")],
        "acknowledge handled events",
    ),
    req(
        "XAUTOCLAIM",
        "+xautoclaim",
        &[
            Lit("XAUTOCLAIM"),
            Stream,
            Group,
            Consumer,
            Lit("1000"),
            Lit("0-0"),
            Lit("COUNT"),
            Lit("1"),
            Lit("JUSTID"),
        ],
        "claim the events of crashed consumers",
    ),
    req(
        "XCLAIM",
        "+xclaim",
        &[
            Lit("XCLAIM"),
            Stream,
            Group,
            Consumer,
            Lit("0"),
            Lit("0-1"),
            Lit("JUSTID"),
        ],
        "renew the leases of running handlers and hand back unstarted events at shutdown",
    ),
    req(
        "XPENDING",
        "+xpending",
        &[
            Lit("XPENDING"),
            Stream,
            Group,
            Lit("-"),
            Lit("+"),
            Lit("1"),
            Consumer,
        ],
        "read the owners and idle times of pending events",
    ),
    req(
        "XINFO GROUPS",
        "+xinfo|groups",
        &[Lit("XINFO"), Lit("GROUPS"), Stream],
        "detect events trimmed before the handler read them",
    ),
    req(
        "XINFO STREAM",
        "+xinfo|stream",
        &[Lit("XINFO"), Lit("STREAM"), Stream],
        "detect events trimmed before the handler read them",
    ),
    req(
        "XRANGE",
        "+xrange",
        &[
            Lit("XRANGE"),
            Stream,
            Lit("-"),
            Lit("+"),
            Lit("COUNT"),
            Lit("1"),
        ],
        "read claimed events",
    ),
    req(
        "XADD",
        "+xadd",
        &[Lit("XADD"), Stream, Lit("*"), Lit("envelope"), Lit("{}")],
        "publish and replay events",
    ),
    req(
        "HINCRBY",
        "+hincrby",
        &[Lit("HINCRBY"), Attempts, AttemptsField, Lit("1")],
        "count failed attempts",
    ),
    req(
        "HMGET",
        "+hmget",
        &[Lit("HMGET"), Attempts, AttemptsField],
        "read failed attempts",
    ),
    req(
        "HDEL",
        "+hdel",
        &[Lit("HDEL"), Attempts, AttemptsField],
        "forget failed attempts of finished events",
    ),
    req(
        "EVALSHA",
        "+evalsha",
        &[Lit("EVALSHA"), Sha, Lit("3"), Stream, Dlq, Attempts],
        "run the bus's scripts (dead letter with ack, replay, leaving the group)",
    ),
    req(
        "EVAL",
        "+eval",
        &[
            Lit("EVAL"),
            Lit("return 0"),
            Lit("3"),
            Stream,
            Dlq,
            Attempts,
        ],
        "load the bus's scripts on first use",
    ),
    opt(
        "XGROUP DELCONSUMER",
        "+xgroup|delconsumer",
        &[Lit("XGROUP"), Lit("DELCONSUMER"), Stream, Group, Consumer],
        "remove a cleanly stopped consumer from its group",
    ),
    opt(
        "CLIENT ID",
        "+client|id",
        &[Lit("CLIENT"), Lit("ID")],
        "release a blocked read at shutdown",
    ),
    opt(
        "CLIENT UNBLOCK",
        "+client|unblock",
        &[Lit("CLIENT"), Lit("UNBLOCK"), Lit("1")],
        "release a blocked read at shutdown",
    ),
    opt(
        "CONFIG GET",
        "+config|get",
        &[Lit("CONFIG"), Lit("GET"), Lit("maxmemory-policy")],
        "warn when Redis may evict streams",
    ),
];

/// The subscriber of one broadcast handler.
const BROADCAST: &[Command] = &[
    req(
        "SUBSCRIBE",
        "+subscribe",
        &[Lit("SUBSCRIBE"), Channel],
        "receive broadcast events",
    ),
    req(
        "PUBLISH",
        "+publish",
        &[Lit("PUBLISH"), Channel, Lit("{}")],
        "publish and replay broadcast events",
    ),
    req(
        "EVALSHA",
        "+evalsha",
        &[Lit("EVALSHA"), Sha, Lit("1"), Dlq],
        "run the bus's scripts (replay of broadcast dead letters)",
    ),
    req(
        "EVAL",
        "+eval",
        &[Lit("EVAL"), Lit("return 0"), Lit("1"), Dlq],
        "load the bus's scripts on first use",
    ),
];

/// A publish-only bus: publishing each registered event.
const PUBLISH_DURABLE: &[Command] = &[req(
    "XADD",
    "+xadd",
    &[Lit("XADD"), Stream, Lit("*"), Lit("envelope"), Lit("{}")],
    "publish events",
)];

const PUBLISH_BROADCAST: &[Command] = &[req(
    "PUBLISH",
    "+publish",
    &[Lit("PUBLISH"), Channel, Lit("{}")],
    "publish broadcast events",
)];

const PUBLISH_ANY: &[Command] = &[req("PING", "+ping", &[Lit("PING")], "probe the connection")];

/// One `ACL DRYRUN` to send: a command with real arguments, and who needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Check {
    pub(crate) name: &'static str,
    pub(crate) rule: &'static str,
    pub(crate) args: Vec<String>,
    /// The first key or channel in `args`, for messages.
    pub(crate) key: Option<String>,
    pub(crate) purpose: &'static str,
    /// Handlers (or `publishing`) that need it, comma separated.
    pub(crate) needed_by: String,
    pub(crate) optional: bool,
}

impl Check {
    /// `XAUTOCLAIM ns:{ev} (claim the events of crashed consumers; handler `h`)`.
    fn describe(&self) -> String {
        let key = self
            .key
            .as_ref()
            .map(|k| format!(" `{k}`"))
            .unwrap_or_default();
        format!(
            "{}{key} (`{}`: {}; {})",
            self.name, self.rule, self.purpose, self.needed_by
        )
    }
}

/// Who a command is checked for: a handler, or a publish-only bus's event.
struct Subject<'a> {
    namespace: &'a str,
    consumer: &'a str,
    event: &'a str,
    group: &'a str,
    needed_by: String,
}

impl Subject<'_> {
    fn arg(&self, arg: Arg) -> String {
        match arg {
            Lit(s) => s.to_owned(),
            Stream => transport::stream_key(self.namespace, self.event),
            Dlq => transport::dlq_key(self.namespace, self.event),
            Attempts => transport::attempts_key(self.namespace, self.event),
            AttemptsField => transport::attempts_field(self.group, "0-1"),
            Channel => transport::channel_key(self.namespace, self.event),
            Group => self.group.to_owned(),
            Consumer => self.consumer.to_owned(),
            NamespacePattern => format!("{}:*", self.namespace),
            Sha => "0000000000000000000000000000000000000000".to_owned(),
        }
    }
}

/// Every check for a bus of `namespace` running `handlers` (publish-only when empty: then
/// `events`, each with its delivery), deduplicated (handlers of one event share most keys).
pub(crate) fn plan(
    namespace: &str,
    consumer: &str,
    handlers: &[Route],
    events: &[(&'static str, Delivery)],
) -> Vec<Check> {
    let mut checks: Vec<Check> = Vec::new();
    let mut index: BTreeMap<Vec<String>, usize> = BTreeMap::new();
    let mut add = |subject: &Subject<'_>, commands: &[Command]| {
        for c in commands {
            let args: Vec<String> = c.args.iter().map(|a| subject.arg(*a)).collect();
            match index.get(&args) {
                Some(&i) => {
                    let check = &mut checks[i];
                    if !check.needed_by.split(", ").any(|n| n == subject.needed_by) {
                        check.needed_by.push_str(", ");
                        check.needed_by.push_str(&subject.needed_by);
                    }
                }
                None => {
                    index.insert(args.clone(), checks.len());
                    let key = c
                        .args
                        .iter()
                        .find(|a| matches!(a, Stream | Dlq | Attempts | Channel))
                        .map(|a| subject.arg(*a));
                    checks.push(Check {
                        name: c.name,
                        rule: c.rule,
                        args,
                        key,
                        purpose: c.purpose,
                        needed_by: subject.needed_by.clone(),
                        optional: c.optional,
                    });
                }
            }
        }
    };
    if handlers.is_empty() {
        for &(event, delivery) in events {
            let subject = Subject {
                namespace,
                consumer,
                event,
                group: "",
                needed_by: "publishing".to_owned(),
            };
            match delivery {
                Delivery::Durable => add(&subject, PUBLISH_DURABLE),
                Delivery::Broadcast => add(&subject, PUBLISH_BROADCAST),
            }
        }
        let subject = Subject {
            namespace,
            consumer,
            event: "",
            group: "",
            needed_by: "publishing".to_owned(),
        };
        add(&subject, PUBLISH_ANY);
        return checks;
    }
    for h in handlers {
        let subject = Subject {
            namespace,
            consumer,
            event: h.event,
            group: h.handler,
            needed_by: format!("handler `{}`", h.handler),
        };
        match h.delivery {
            Delivery::Durable => add(&subject, DURABLE),
            Delivery::Broadcast => add(&subject, BROADCAST),
        }
        add(&subject, DEAD_LETTERS);
    }
    checks
}

/// The registered event types with their delivery, sorted by name.
fn registered_events() -> Vec<(&'static str, Delivery)> {
    let mut events: Vec<(&'static str, Delivery)> = inventory::iter::<EventRegistration>
        .into_iter()
        .map(|e| (e.name, e.delivery))
        .collect();
    events.sort_unstable_by_key(|(name, _)| *name);
    events.dedup();
    events
}

/// What `ACL DRYRUN` said about one check.
#[derive(Debug)]
pub(crate) enum Verdict {
    Allowed,
    /// Redis's reason, e.g. "This user has no permissions to run the 'xautoclaim' command".
    Denied(String),
    /// The dry run itself failed (a command unknown to this server version, or `ACL DRYRUN`
    /// unknown or denied).
    Failed(redis::RedisError),
}

fn verdict(reply: Value) -> Verdict {
    match reply {
        Value::Okay => Verdict::Allowed,
        Value::SimpleString(s) if s == "OK" => Verdict::Allowed,
        Value::SimpleString(s) => Verdict::Denied(s),
        Value::BulkString(b) => Verdict::Denied(String::from_utf8_lossy(&b).into_owned()),
        Value::VerbatimString { text, .. } => Verdict::Denied(text),
        Value::ServerError(e) => Verdict::Failed(e.into()),
        other => Verdict::Denied(format!("unexpected reply {other:?}")),
    }
}

/// Checks with `ACL DRYRUN` that the connection's user may run every command this bus needs.
/// Skipped (logged) when the server cannot tell: Redis 6, or `ACL WHOAMI`/`ACL DRYRUN` denied or
/// unknown.
///
/// # Errors
///
/// [`Error::Permission`] listing every missing required permission and the minimal ACL;
/// [`Error::Transport`] when the connection fails during the check.
pub(crate) async fn check_permissions<C: ConnectionLike + Send>(
    conn: &mut C,
    config: &Config,
    handlers: &[Route],
) -> Result<()> {
    let user: String = match redis::cmd("ACL").arg("WHOAMI").query_async(conn).await {
        Ok(user) => user,
        Err(e) if crate::transport::redis::errors::is_transient(&e) => {
            return Err(crate::transport::redis::errors::to_error("ACL WHOAMI")(e));
        }
        Err(e) => {
            skipped(&e);
            return Ok(());
        }
    };
    let events = if handlers.is_empty() {
        registered_events()
    } else {
        Vec::new()
    };
    let checks = plan(&config.namespace, &config.consumer, handlers, &events);
    if checks.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for check in &checks {
        pipe.cmd("ACL").arg("DRYRUN").arg(&user).arg(&check.args);
    }
    let replies: Vec<Value> = pipe
        .ignore_errors()
        .query_async(conn)
        .await
        .map_err(crate::transport::redis::errors::to_error("ACL DRYRUN"))?;
    let verdicts: Vec<Verdict> = replies.into_iter().map(verdict).collect();
    let failures = verdicts
        .iter()
        .filter(|v| matches!(v, Verdict::Failed(_)))
        .count();
    // `ACL DRYRUN` denied or unknown: every dry run fails the same way.
    if let Some(Verdict::Failed(e)) = verdicts
        .iter()
        .find(|v| matches!(v, Verdict::Failed(e) if e.code() == Some("NOPERM")))
        .or_else(|| verdicts.first().filter(|_| failures == verdicts.len()))
    {
        skipped(e);
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut first_missing: Option<&'static str> = None;
    for (check, verdict) in checks.iter().zip(&verdicts) {
        match verdict {
            Verdict::Allowed => {}
            Verdict::Denied(reason) if check.optional => {
                tracing::info!(
                    user = %user,
                    command = check.name,
                    reason = %reason,
                    "optional Redis permission missing: {}; the bus runs without it (grant `{}` to enable it)",
                    check.describe(),
                    check.rule,
                );
            }
            Verdict::Denied(reason) => {
                first_missing.get_or_insert(check.name);
                missing.push(format!("{}: {reason}", check.describe()));
            }
            Verdict::Failed(e) => {
                tracing::debug!(
                    command = check.name,
                    error = %e,
                    "permission of one command could not be checked with ACL DRYRUN"
                );
            }
        }
    }
    let Some(command) = first_missing else {
        tracing::debug!(user = %user, checked = checks.len(), "Redis ACL permits every command the bus needs");
        return Ok(());
    };
    // A publish-only bus may link event types it never publishes: it fails only when it can
    // publish nothing at all (a wrong namespace, no `+xadd`); single denials are warnings.
    let publishes = |c: &&Check| c.name != "PING";
    let allowed_publishes = checks
        .iter()
        .zip(&verdicts)
        .filter(|(c, v)| publishes(c) && !matches!(v, Verdict::Denied(_)))
        .count();
    if handlers.is_empty() && allowed_publishes > 0 {
        for m in &missing {
            tracing::warn!(
                user = %user,
                "publishing may fail: the Redis user lacks a permission: {m}; grant it if this service publishes that event"
            );
        }
        return Ok(());
    }
    Err(Error::Permission {
        command,
        detail: format!(
            "start-up check with ACL DRYRUN: user `{user}` lacks {n} permission{s} this bus needs: {list}. The minimal ACL for namespace `{ns}` is: {acl}",
            n = missing.len(),
            s = if missing.len() == 1 { "" } else { "s" },
            list = missing.join("; "),
            ns = config.namespace,
            acl = minimal_acl(&user, &config.namespace),
        ),
    })
}

fn skipped(e: &redis::RedisError) {
    if e.code() == Some("NOPERM") {
        tracing::info!(
            error = %e,
            "start-up permission check skipped: the Redis user may not run ACL WHOAMI or ACL DRYRUN; grant `+acl|whoami +acl|dryrun` to have missing permissions reported at start-up"
        );
    } else {
        tracing::debug!(
            error = %e,
            "start-up permission check skipped: this Redis has no ACL DRYRUN (Redis 7 or later)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H1: Route = Route {
        handler: "h1",
        event: "d.ev",
        delivery: Delivery::Durable,
    };
    const H2: Route = Route {
        handler: "h2",
        event: "d.ev",
        delivery: Delivery::Durable,
    };
    const B1: Route = Route {
        handler: "b1",
        event: "b.ev",
        delivery: Delivery::Broadcast,
    };

    #[test]
    fn every_rule_checked_is_in_the_minimal_acl() {
        for commands in [
            DURABLE,
            BROADCAST,
            DEAD_LETTERS,
            PUBLISH_DURABLE,
            PUBLISH_BROADCAST,
            PUBLISH_ANY,
        ] {
            for c in commands {
                assert!(MINIMAL_RULES.contains(&c.rule), "{} ({})", c.rule, c.name);
                assert!(
                    c.name.starts_with(
                        c.rule[1..]
                            .split('|')
                            .next()
                            .unwrap_or("")
                            .to_ascii_uppercase()
                            .as_str()
                    ),
                    "{} vs {}",
                    c.name,
                    c.rule
                );
            }
        }
        let line = minimal_acl("svc", "orders");
        assert!(
            line.starts_with(
                "ACL SETUSER svc on >PASSWORD ~orders:* resetchannels &orders:* -@all +xadd "
            ),
            "{line}"
        );
        assert!(line.contains("+acl|whoami +acl|dryrun"), "{line}");
    }

    #[test]
    fn plans_real_keys_per_handler_and_deduplicates() {
        let checks = plan("ns", "c1", &[H1, H2, B1], &[]);
        let find = |args: &[&str]| {
            checks
                .iter()
                .find(|c| c.args == args)
                .unwrap_or_else(|| panic!("no check {args:?} in {checks:#?}"))
        };
        let claim = find(&[
            "XAUTOCLAIM",
            "ns:{d.ev}",
            "h2",
            "c1",
            "1000",
            "0-0",
            "COUNT",
            "1",
            "JUSTID",
        ]);
        assert_eq!(claim.needed_by, "handler `h2`");
        // One XADD to the stream, needed by both handlers of the event.
        let add = find(&["XADD", "ns:{d.ev}", "*", "envelope", "{}"]);
        assert_eq!(add.needed_by, "handler `h1`, handler `h2`");
        find(&["HINCRBY", "ns:{d.ev}:attempts", "0-1 h1", "1"]);
        find(&[
            "EVALSHA",
            &"0".repeat(40),
            "3",
            "ns:{d.ev}",
            "ns:{d.ev}:dlq",
            "ns:{d.ev}:attempts",
        ]);
        find(&["SUBSCRIBE", "ns:b.ev"]);
        find(&["XADD", "ns:{b.ev}:dlq", "*", "envelope", "{}"]);
        assert!(find(&["CLIENT", "ID"]).optional);
        assert!(
            !checks
                .iter()
                .any(|c| c.args[0] == "XREADGROUP" && c.args.contains(&"b1".to_owned()))
        );
        let unique: std::collections::BTreeSet<_> = checks.iter().map(|c| &c.args).collect();
        assert_eq!(unique.len(), checks.len());
        assert!(
            claim
                .describe()
                .starts_with("XAUTOCLAIM `ns:{d.ev}` (`+xautoclaim`: "),
            "{}",
            claim.describe()
        );
    }

    #[test]
    fn a_publish_only_bus_checks_publishing_only() {
        let checks = plan(
            "ns",
            "c1",
            &[],
            &[("d.ev", Delivery::Durable), ("b.ev", Delivery::Broadcast)],
        );
        let args: Vec<Vec<&str>> = checks
            .iter()
            .map(|c| c.args.iter().map(String::as_str).collect())
            .collect();
        assert_eq!(
            args,
            [
                vec!["XADD", "ns:{d.ev}", "*", "envelope", "{}"],
                vec!["PUBLISH", "ns:b.ev", "{}"],
                vec!["PING"],
            ]
        );
    }

    #[test]
    fn reads_dry_run_replies() {
        assert!(matches!(verdict(Value::Okay), Verdict::Allowed));
        assert!(matches!(
            verdict(Value::BulkString(b"no permissions".to_vec())),
            Verdict::Denied(reason) if reason == "no permissions"
        ));
    }
}
