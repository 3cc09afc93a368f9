//! Who each role is to the broker, and what the broker lets it do.
//!
//! Every role authenticates to NATS with its own identity ([`NatsCredentials`], from the
//! environment) and the broker holds each identity to the subjects DESIGN gives its role
//! ([`permissions`]). The nats-server authorization block is rendered from here
//! ([`render_server_config`], `parley nats-config`), so the permissions and the subjects the code
//! uses come from one place, [`crate::subjects`]. docs/operations.md, "Broker credentials and
//! permissions", is the operator's view.
//!
//! # Layout
//! - [`BrokerRole`]: the three roles that connect, with their broker user name and the
//!   role-scoped variable names (`PARLEY_<ROLE>_NATS_*`).
//! - [`NatsCredentials`]: user and password, token, creds file or nkey seed file, parsed from the
//!   environment and applied to `async_nats::ConnectOptions` by [`apply`].
//! - [`permissions`] and [`render_server_config`]: the broker's side.

use std::fmt::Write as _;

use crate::config::{ConfigError, Env, Secret};
use crate::subjects::Subjects;

/// A role that connects to NATS, as the broker knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerRole {
    Gateway,
    Persistence,
    Auth,
}

/// The names of the five credential variables, generic (`NATS_*`) or scoped to one role.
struct Vars {
    user: &'static str,
    password: &'static str,
    token: &'static str,
    creds: &'static str,
    nkey: &'static str,
}

const GENERIC: Vars = Vars {
    user: "NATS_USER",
    password: "NATS_PASSWORD",
    token: "NATS_TOKEN",
    creds: "NATS_CREDS",
    nkey: "NATS_NKEY",
};

impl BrokerRole {
    pub const ALL: [BrokerRole; 3] = [
        BrokerRole::Gateway,
        BrokerRole::Persistence,
        BrokerRole::Auth,
    ];

    /// The broker user of the role, and the last token of its inbox prefix.
    pub const fn user(self) -> &'static str {
        match self {
            BrokerRole::Gateway => "gateway",
            BrokerRole::Persistence => "persistence",
            BrokerRole::Auth => "auth",
        }
    }

    /// The role's name on the broker: its connection name, and for persistence and auth the
    /// name their request/reply service registers (`$SRV` discovery).
    pub const fn service_name(self) -> &'static str {
        match self {
            BrokerRole::Gateway => "parley-gateway",
            BrokerRole::Persistence => "parley-persistence",
            BrokerRole::Auth => "parley-auth",
        }
    }

    /// Whether the role answers requests (a NATS service): it may publish each reply once.
    pub const fn answers_requests(self) -> bool {
        !matches!(self, BrokerRole::Gateway)
    }

    /// The variable the server configuration reads the role's password from; also the
    /// role-scoped password variable the role itself reads, so one value serves both sides.
    pub const fn password_var(self) -> &'static str {
        self.vars().password
    }

    /// `PARLEY_<ROLE>_NATS_*`: the role's own credentials, ahead of the generic `NATS_*`, so
    /// `parley all` runs its three roles under three identities.
    const fn vars(self) -> Vars {
        match self {
            BrokerRole::Gateway => Vars {
                user: "PARLEY_GATEWAY_NATS_USER",
                password: "PARLEY_GATEWAY_NATS_PASSWORD",
                token: "PARLEY_GATEWAY_NATS_TOKEN",
                creds: "PARLEY_GATEWAY_NATS_CREDS",
                nkey: "PARLEY_GATEWAY_NATS_NKEY",
            },
            BrokerRole::Persistence => Vars {
                user: "PARLEY_PERSISTENCE_NATS_USER",
                password: "PARLEY_PERSISTENCE_NATS_PASSWORD",
                token: "PARLEY_PERSISTENCE_NATS_TOKEN",
                creds: "PARLEY_PERSISTENCE_NATS_CREDS",
                nkey: "PARLEY_PERSISTENCE_NATS_NKEY",
            },
            BrokerRole::Auth => Vars {
                user: "PARLEY_AUTH_NATS_USER",
                password: "PARLEY_AUTH_NATS_PASSWORD",
                token: "PARLEY_AUTH_NATS_TOKEN",
                creds: "PARLEY_AUTH_NATS_CREDS",
                nkey: "PARLEY_AUTH_NATS_NKEY",
            },
        }
    }
}

/// How a role proves who it is to the broker. `Debug` never prints a secret.
#[derive(Debug, Clone, Default)]
pub enum NatsCredentials {
    /// No credentials: a broker without authorization (or one with a `no_auth_user`).
    #[default]
    None,
    UserPassword {
        user: String,
        password: Secret,
    },
    Token(Secret),
    /// The contents of a `.creds` file (a user JWT and its nkey seed), read at start.
    Creds {
        path: String,
        contents: Secret,
    },
    /// An nkey seed, read at start from a file.
    Nkey {
        path: String,
        seed: Secret,
    },
}

impl NatsCredentials {
    /// The role's credentials: its own `PARLEY_<ROLE>_NATS_*` when any is set, else the generic
    /// `NATS_*`. At most one way per set; a password without a user (or the reverse), an
    /// unreadable or malformed creds or seed file is an error naming the variable.
    pub fn from_env(env: &Env, role: Option<BrokerRole>) -> Result<Self, ConfigError> {
        if let Some(role) = role {
            let own = Self::read(env, &role.vars())?;
            if !matches!(own, NatsCredentials::None) {
                return Ok(own);
            }
        }
        Self::read(env, &GENERIC)
    }

    fn read(env: &Env, vars: &Vars) -> Result<Self, ConfigError> {
        let user = env.get(vars.user).map(str::to_owned);
        let password = env.secret(vars.password);
        let token = env.secret(vars.token);
        let creds = env.get(vars.creds).map(str::to_owned);
        let nkey = env.get(vars.nkey).map(str::to_owned);
        let set: Vec<&'static str> = [
            (user.is_some() || password.is_some(), vars.user),
            (token.is_some(), vars.token),
            (creds.is_some(), vars.creds),
            (nkey.is_some(), vars.nkey),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        if let [first, second, ..] = set[..] {
            return Err(ConfigError::Invalid {
                name: second,
                reason: format!(
                    "set together with {first}: give the broker one way to authenticate \
                     ({}/{}, {}, {} or {})",
                    vars.user, vars.password, vars.token, vars.creds, vars.nkey
                ),
            });
        }
        let file = |name: &'static str, path: &str| {
            std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
                name,
                reason: format!("cannot read {path:?}: {e}"),
            })
        };
        Ok(match (user, password, token, creds, nkey) {
            (Some(user), Some(password), ..) => NatsCredentials::UserPassword { user, password },
            (Some(_), None, ..) => {
                return Err(ConfigError::Missing {
                    name: vars.password,
                });
            }
            (None, Some(_), ..) => return Err(ConfigError::Missing { name: vars.user }),
            (_, _, Some(token), ..) => NatsCredentials::Token(token),
            (_, _, _, Some(path), _) => {
                let contents = file(vars.creds, &path)?;
                async_nats::ConnectOptions::with_credentials(&contents).map_err(|e| {
                    ConfigError::Invalid {
                        name: vars.creds,
                        reason: format!("{path:?} is not a NATS credentials file: {e}"),
                    }
                })?;
                NatsCredentials::Creds {
                    path,
                    contents: Secret::new(contents),
                }
            }
            (_, _, _, _, Some(path)) => {
                let seed = file(vars.nkey, &path)?.trim().to_owned();
                nkeys::KeyPair::from_seed(&seed).map_err(|e| ConfigError::Invalid {
                    name: vars.nkey,
                    reason: format!("{path:?} does not hold an nkey seed: {e}"),
                })?;
                NatsCredentials::Nkey {
                    path,
                    seed: Secret::new(seed),
                }
            }
            _ => NatsCredentials::None,
        })
    }
}

/// `options` with the role's credentials, and, for a role, its own inbox prefix
/// (`_INBOX.<prefix>.<role>`) so the broker can keep other identities from its replies.
/// Every connection Parley makes goes through here ([`crate::nats::connect`]).
pub fn apply(
    options: async_nats::ConnectOptions,
    cfg: &crate::config::NatsConfig,
) -> async_nats::ConnectOptions {
    let options = match &cfg.credentials {
        NatsCredentials::None => options,
        NatsCredentials::UserPassword { user, password } => {
            options.user_and_password(user.clone(), password.expose().to_owned())
        }
        NatsCredentials::Token(token) => options.token(token.expose().to_owned()),
        // Checked when the configuration was read.
        NatsCredentials::Creds { contents, .. } => options
            .credentials(contents.expose())
            .expect("creds checked at start"),
        NatsCredentials::Nkey { seed, .. } => options.nkey(seed.expose().to_owned()),
    };
    match cfg.role {
        Some(role) => options.custom_inbox_prefix(cfg.prefix.inbox_prefix(role.user())),
        None => options,
    }
}

/// What one broker user may publish and subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    /// May answer the requests it receives (a service), once each, whatever the reply subject.
    pub allow_responses: bool,
}

/// The JetStream API calls on one stream that declare it and read its state.
fn declare(stream: &str) -> [String; 3] {
    ["INFO", "CREATE", "UPDATE"].map(|op| format!("$JS.API.STREAM.{op}.{stream}"))
}

/// The `$SRV` discovery subjects a service answers: every service's `PING`/`INFO`/`STATS`, and
/// those addressed to it by name (and by name and id).
fn discovery(name: &str) -> [String; 3] {
    [
        "$SRV.*".to_owned(),
        format!("$SRV.*.{name}"),
        format!("$SRV.*.{name}.>"),
    ]
}

/// What DESIGN gives each role, as subjects under `subjects`' prefix:
///
/// - gateway: publishes commands (`{p}.in.*.*`) and requests (`{p}.rpc.chat.*`,
///   `{p}.rpc.auth.*`), and the ephemeral events (typing, presence) DESIGN §2 has it publish
///   straight to user subjects; reads user and control subjects; declares `{P}_IN` and
///   `{P}_DLQ` (reads and creates, never consumes or purges) and owns the presence bucket.
/// - persistence: the only consumer of `{P}_IN` (consumers, pulls, acks), writes `{P}_DLQ`,
///   answers `{p}.rpc.chat.*`, announces deliveries and conversation changes, heartbeats.
/// - auth: answers `{p}.rpc.auth.*`, announces revocations on `{p}.ctl.user.*`.
///
/// Each also publishes and reads its own inbox (`_INBOX.{p}.<role>.>`), where its replies come.
pub fn permissions(subjects: &Subjects, role: BrokerRole) -> Permissions {
    let inbox = format!("{}.>", subjects.inbox_prefix(role.user()));
    let (stream_in, dlq, kv) = (
        subjects.stream_in(),
        subjects.stream_dlq(),
        subjects.presence_stream(),
    );
    let mut publish = vec![inbox.clone()];
    let mut subscribe = vec![inbox];
    match role {
        BrokerRole::Gateway => {
            publish.extend([
                subjects.in_all(),
                subjects.rpc_chat_all(),
                subjects.rpc_auth_all(),
                subjects.out_user_all(),
                subjects.presence_keys(),
            ]);
            publish.extend(declare(&stream_in));
            publish.extend(declare(&dlq));
            publish.extend(declare(&kv));
            publish.extend([
                format!("$JS.API.STREAM.PURGE.{kv}"),
                format!("$JS.API.STREAM.MSG.GET.{kv}"),
                format!("$JS.API.DIRECT.GET.{kv}"),
                format!("$JS.API.DIRECT.GET.{kv}.>"),
                // The ordered consumer that watches gateways' heartbeats in the bucket.
                format!("$JS.API.CONSUMER.CREATE.{kv}"),
                format!("$JS.API.CONSUMER.CREATE.{kv}.>"),
                format!("$JS.API.CONSUMER.INFO.{kv}.>"),
                format!("$JS.API.CONSUMER.DELETE.{kv}.>"),
                format!("$JS.FC.{kv}.>"),
            ]);
            subscribe.extend([
                subjects.out_user_all(),
                subjects.ctl_user_all(),
                subjects.ctl_conversation_all(),
            ]);
        }
        BrokerRole::Persistence => {
            publish.extend([
                subjects.out_user_all(),
                subjects.ctl_conversation_all(),
                subjects.ctl_persist_replicas(),
                subjects.dlq(),
            ]);
            publish.extend(declare(&stream_in));
            publish.extend(declare(&dlq));
            publish.extend([
                // NAMES and LIST; CREATE, INFO, DELETE and UNPIN of its partition consumers.
                format!("$JS.API.CONSUMER.*.{stream_in}"),
                format!("$JS.API.CONSUMER.*.{stream_in}.>"),
                format!("$JS.API.CONSUMER.MSG.NEXT.{stream_in}.>"),
                format!("$JS.ACK.{stream_in}.>"),
            ]);
            subscribe.extend([subjects.rpc_chat_all(), subjects.ctl_persist_replicas()]);
        }
        BrokerRole::Auth => {
            publish.push(subjects.ctl_user_all());
            subscribe.push(subjects.rpc_auth_all());
        }
    }
    if role.answers_requests() {
        subscribe.extend(discovery(role.service_name()));
    }
    Permissions {
        publish,
        subscribe,
        allow_responses: role.answers_requests(),
    }
}

/// The user every client without credentials is, on a development server: anything goes. Only
/// in the configuration [`render_server_config`] renders with `dev`.
pub const DEV_USER: &str = "dev";

/// A nats-server configuration fragment: an `authorization` block with one user per role and
/// its [`permissions`], each password read from the server's environment
/// ([`BrokerRole::password_var`]). With `dev`, also a user [`DEV_USER`] allowed everything, which
/// clients that send no credentials become (`no_auth_user`): the tests and tools of a
/// development machine keep working beside roles held to their permissions.
pub fn render_server_config(subjects: &Subjects, dev: bool) -> String {
    let mut out = String::new();
    let command = if dev {
        "parley nats-config --dev"
    } else {
        "parley nats-config"
    };
    let _ = writeln!(
        out,
        "# nats-server authorization for Parley, prefix \"{prefix}\".\n\
         # Generated by `PARLEY_NATS_PREFIX={prefix} {command}` from common/src/nats_auth.rs: do not\n\
         # edit by hand (a test holds the shipped copy to the code). Include it from the server's\n\
         # configuration; each password comes from the server's environment. See\n\
         # docs/operations.md, \"Broker credentials and permissions\".",
        prefix = subjects.prefix()
    );
    if dev {
        let _ = writeln!(
            out,
            "# Development only: a client without credentials is `{DEV_USER}`, allowed everything."
        );
        let _ = writeln!(out, "no_auth_user: {DEV_USER}");
    }
    out.push_str("authorization {\n");
    out.push_str("  users = [\n");
    for role in BrokerRole::ALL {
        let p = permissions(subjects, role);
        let _ = writeln!(out, "    {{");
        let _ = writeln!(out, "      user: {}", role.user());
        let _ = writeln!(out, "      password: ${}", role.password_var());
        let _ = writeln!(out, "      permissions: {{");
        list(&mut out, "publish", &p.publish);
        list(&mut out, "subscribe", &p.subscribe);
        if p.allow_responses {
            let _ = writeln!(out, "        allow_responses: true");
        }
        let _ = writeln!(out, "      }}");
        let _ = writeln!(out, "    }}");
    }
    if dev {
        let _ = writeln!(out, "    {{ user: {DEV_USER} }}");
    }
    out.push_str("  ]\n}\n");
    out
}

fn list(out: &mut String, kind: &str, subjects: &[String]) {
    let _ = writeln!(out, "        {kind}: {{");
    let _ = writeln!(out, "          allow: [");
    for s in subjects {
        let _ = writeln!(out, "            \"{s}\"");
    }
    let _ = writeln!(out, "          ]");
    let _ = writeln!(out, "        }}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parley() -> Subjects {
        Subjects::new("parley").unwrap()
    }

    #[test]
    fn a_role_uses_its_own_credentials_ahead_of_the_generic_ones() {
        let env = Env::from_pairs([
            ("NATS_USER", "shared"),
            ("NATS_PASSWORD", "shared-pw"),
            ("PARLEY_GATEWAY_NATS_USER", "gateway"),
            ("PARLEY_GATEWAY_NATS_PASSWORD", "gw-pw"),
        ]);
        let NatsCredentials::UserPassword { user, password } =
            NatsCredentials::from_env(&env, Some(BrokerRole::Gateway)).unwrap()
        else {
            panic!("user and password expected");
        };
        assert_eq!((user.as_str(), password.expose()), ("gateway", "gw-pw"));
        let NatsCredentials::UserPassword { user, .. } =
            NatsCredentials::from_env(&env, Some(BrokerRole::Auth)).unwrap()
        else {
            panic!("user and password expected");
        };
        assert_eq!(user, "shared");
        assert!(matches!(
            NatsCredentials::from_env(&Env::default(), Some(BrokerRole::Auth)).unwrap(),
            NatsCredentials::None
        ));
    }

    #[test]
    fn half_a_login_or_two_ways_at_once_is_refused_naming_the_variable() {
        let err = |pairs: &[(&str, &str)]| {
            NatsCredentials::from_env(&Env::from_pairs(pairs.to_vec()), Some(BrokerRole::Gateway))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(&[("NATS_USER", "gateway")]),
            "NATS_PASSWORD is required but not set"
        );
        assert_eq!(
            err(&[("PARLEY_GATEWAY_NATS_PASSWORD", "x")]),
            "PARLEY_GATEWAY_NATS_USER is required but not set"
        );
        let both = err(&[
            ("NATS_USER", "u"),
            ("NATS_PASSWORD", "p"),
            ("NATS_TOKEN", "t"),
        ]);
        assert!(
            both.starts_with("NATS_TOKEN is invalid: set together with NATS_USER"),
            "{both}"
        );
    }

    #[test]
    fn a_missing_or_malformed_creds_or_seed_file_is_refused_naming_the_variable() {
        let dir = std::env::temp_dir().join(format!("parley-nats-auth-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage");
        std::fs::write(&garbage, "not a key").unwrap();
        let garbage = garbage.to_str().unwrap();
        for name in ["NATS_CREDS", "NATS_NKEY"] {
            for path in ["/nonexistent/parley.creds", garbage] {
                let e = NatsCredentials::from_env(&Env::from_pairs([(name, path)]), None)
                    .unwrap_err()
                    .to_string();
                assert!(e.starts_with(&format!("{name} is invalid: ")), "{e}");
                assert!(e.contains(path), "{e}");
            }
        }
        let seed = nkeys::KeyPair::new_user().seed().unwrap();
        let file = dir.join("user.nk");
        std::fs::write(&file, format!("{seed}\n")).unwrap();
        let creds = NatsCredentials::from_env(
            &Env::from_pairs([("NATS_NKEY", file.to_str().unwrap())]),
            None,
        )
        .unwrap();
        assert!(matches!(&creds, NatsCredentials::Nkey { seed: s, .. } if s.expose() == seed));
        assert!(!format!("{creds:?}").contains(&seed), "{creds:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn passwords_and_tokens_never_print() {
        let env = Env::from_pairs([("NATS_USER", "gateway"), ("NATS_PASSWORD", "hunter2")]);
        let shown = format!("{:?}", NatsCredentials::from_env(&env, None).unwrap());
        assert!(
            shown.contains("gateway") && !shown.contains("hunter2"),
            "{shown}"
        );
        let env = Env::from_pairs([("NATS_TOKEN", "s3cret-token")]);
        let shown = format!("{:?}", NatsCredentials::from_env(&env, None).unwrap());
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn only_persistence_consumes_the_command_stream_and_only_auth_answers_auth() {
        let s = parley();
        let gateway = permissions(&s, BrokerRole::Gateway);
        let persistence = permissions(&s, BrokerRole::Persistence);
        let auth = permissions(&s, BrokerRole::Auth);
        let consumes =
            |p: &Permissions| p.publish.iter().any(|s| s.contains("CONSUMER.*.PARLEY_IN"));
        assert!(consumes(&persistence) && !consumes(&gateway) && !consumes(&auth));
        let answers = |p: &Permissions| p.subscribe.contains(&"parley.rpc.auth.*".to_owned());
        assert!(answers(&auth) && !answers(&gateway) && !answers(&persistence));
        let revokes = |p: &Permissions| p.publish.contains(&"parley.ctl.user.*".to_owned());
        assert!(revokes(&auth) && !revokes(&gateway) && !revokes(&persistence));
        assert!(gateway.publish.contains(&"parley.in.*.*".to_owned()));
        assert!(!persistence.publish.contains(&"parley.in.*.*".to_owned()));
        assert!(!gateway.allow_responses && persistence.allow_responses && auth.allow_responses);
        assert!(
            gateway
                .subscribe
                .contains(&"_INBOX.parley.gateway.>".to_owned())
        );
        assert!(
            !gateway
                .subscribe
                .iter()
                .any(|s| s.contains("persistence") || s == "_INBOX.>")
        );
    }

    /// The rendered files in deploy/nats/ are what the code renders today: regenerate them with
    /// `parley nats-config > deploy/nats/parley-auth.conf` (and `--dev` for parley-dev.conf).
    #[test]
    fn the_shipped_server_configurations_are_what_the_code_renders() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats");
        for (file, dev) in [("parley-auth.conf", false), ("parley-dev.conf", true)] {
            let shipped = std::fs::read_to_string(root.join(file))
                .unwrap_or_else(|e| panic!("deploy/nats/{file}: {e}"));
            assert!(
                shipped == render_server_config(&parley(), dev),
                "deploy/nats/{file} differs from what the code renders: run `parley nats-config{} > deploy/nats/{file}`",
                if dev { " --dev" } else { "" }
            );
        }
    }
}
