//! Cross-facet consistency of a spec: sections that are each valid on their own but do not fit
//! together (a database host no certificate covers, a flow that skips the backend). Pure: the
//! `Consistent` condition and `bulwark audit` both read it.

use crate::api::{SecurityPolicySpec, SslMode};

/// Tier name the checks treat as the data tier (the convention of spec.tiers).
pub const DATA_TIER: &str = "data";
/// Tier name the checks treat as the public-facing tier.
pub const FRONTEND_TIER: &str = "frontend";

/// One way the sections of a spec disagree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inconsistency {
    /// CamelCase reason, used as the condition reason.
    pub reason: &'static str,
    /// The spec field at fault, e.g. `spec.postgres.sslMode`.
    pub field: String,
    /// Starts with `field`; says what is wrong and what to do.
    pub message: String,
}

pub const POSTGRES_HOST_NOT_COVERED: &str = "PostgresHostNotCovered";
pub const WEAK_SSL_MODE: &str = "WeakSslMode";
pub const KAFKA_BOOTSTRAP_NOT_COVERED: &str = "KafkaBootstrapNotCovered";
pub const FRONTEND_TO_DATA: &str = "FrontendToData";
pub const EXTERNAL_INGRESS_TO_DATA: &str = "ExternalIngressToData";

/// Every inconsistency of `spec`, in a stable order (the order of the checks, then of the spec).
pub fn inconsistencies(spec: &SecurityPolicySpec) -> Vec<Inconsistency> {
    let mut out = Vec::new();
    if let Some(pg) = &spec.postgres {
        if !host_covered(spec, &pg.host) {
            let field = "spec.postgres.host".to_string();
            out.push(Inconsistency {
                reason: POSTGRES_HOST_NOT_COVERED,
                message: format!(
                    "{field}: {:?} is not among the dnsNames or ipAddresses of any certificate in spec.tls.certificates, so clients cannot verify the server's certificate; add it to the PostgreSQL server's certificate",
                    pg.host
                ),
                field,
            });
        }
        if pg.ssl_mode != SslMode::VerifyFull {
            let field = "spec.postgres.sslMode".to_string();
            let mode = match pg.ssl_mode {
                SslMode::VerifyCa => "verify-ca checks the CA but not the server's host name",
                SslMode::Require => {
                    "require encrypts but verifies neither the CA nor the host name"
                }
                SslMode::VerifyFull => unreachable!("filtered above"),
            };
            out.push(Inconsistency {
                reason: WEAK_SSL_MODE,
                message: format!("{field}: {mode}; use verify-full"),
                field,
            });
        }
    }
    if let Some(kafka) = &spec.kafka {
        let uncovered: Vec<String> = bootstrap_hosts(&kafka.bootstrap_servers)
            .into_iter()
            .filter(|(host, _)| !host_covered(spec, host))
            .map(|(host, _)| host)
            .collect();
        if !uncovered.is_empty() {
            let field = "spec.kafka.bootstrapServers".to_string();
            out.push(Inconsistency {
                reason: KAFKA_BOOTSTRAP_NOT_COVERED,
                message: format!(
                    "{field}: {} not among the dnsNames or ipAddresses of any certificate in spec.tls.certificates, so clients checking the broker's host name refuse it; add it to the brokers' certificate",
                    quoted_list(&uncovered)
                ),
                field,
            });
        }
    }
    if let Some(network) = &spec.network {
        for (i, flow) in network.flows.iter().enumerate() {
            if flow.from == FRONTEND_TIER && flow.to == DATA_TIER {
                let field = format!("spec.network.flows[{i}]");
                out.push(Inconsistency {
                    reason: FRONTEND_TO_DATA,
                    message: format!(
                        "{field}: the frontend tier reaches the data tier directly on port(s) {}; route this traffic through the backend tier",
                        ports_text(&flow.ports)
                    ),
                    field,
                });
            }
        }
        for (i, rule) in network.ingress.iter().enumerate() {
            if rule.to == DATA_TIER {
                let field = format!("spec.network.ingress[{i}]");
                out.push(Inconsistency {
                    reason: EXTERNAL_INGRESS_TO_DATA,
                    message: format!(
                        "{field}: peers outside the namespace reach the data tier directly on port(s) {}; let them go through the backend tier",
                        ports_text(&rule.ports)
                    ),
                    field,
                });
            }
        }
    }
    out
}

/// True when some certificate of `spec.tls` names `host` among its subject alternative names
/// (a `*.` wildcard covers exactly one leftmost label, as TLS clients match it).
pub fn host_covered(spec: &SecurityPolicySpec, host: &str) -> bool {
    let Some(tls) = &spec.tls else {
        return false;
    };
    tls.certificates.iter().any(|c| {
        c.dns_names.iter().any(|n| dns_name_covers(&n.0, host))
            || c.ip_addresses
                .iter()
                .any(|ip| ip.0.eq_ignore_ascii_case(host))
    })
}

/// True when the certificate name `san` (possibly `*.` wildcard) matches `host`.
pub fn dns_name_covers(san: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let san = san.to_ascii_lowercase();
    match san.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => san == host,
    }
}

/// `(host, port)` of each comma-separated `host:port` (IPv6 in brackets); port 0 when absent.
pub fn bootstrap_hosts(servers: &str) -> Vec<(String, i32)> {
    servers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (host, port) = match s.rsplit_once(':') {
                Some((h, p)) if !h.ends_with(':') => (h, p.parse().unwrap_or(0)),
                _ => (s, 0),
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            (host.to_string(), port)
        })
        .collect()
}

fn quoted_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|h| format!("{h:?}")).collect();
    match quoted.len() {
        1 => format!("{} is", quoted[0]),
        _ => format!("{} are", quoted.join(", ")),
    }
}

fn ports_text(ports: &[crate::api::PortSpec]) -> String {
    ports
        .iter()
        .map(|p| match p.end_port {
            Some(end) if end != p.port => format!("{}-{end}", p.port),
            _ => p.port.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SecurityPolicy;

    fn example() -> SecurityPolicy {
        serde_yaml::from_str(include_str!(
            "../../deploy/examples/traffic-prediction.yaml"
        ))
        .unwrap()
    }

    fn reasons(spec: &SecurityPolicySpec) -> Vec<&'static str> {
        inconsistencies(spec)
            .into_iter()
            .map(|i| i.reason)
            .collect()
    }

    #[test]
    fn the_example_is_consistent() {
        assert_eq!(inconsistencies(&example().spec), []);
    }

    #[test]
    fn postgres_host_without_certificate_names_the_field() {
        let mut policy = example();
        policy.spec.postgres.as_mut().unwrap().host = "db.traffic.svc".into();
        let found = inconsistencies(&policy.spec);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].reason, POSTGRES_HOST_NOT_COVERED);
        assert_eq!(found[0].field, "spec.postgres.host");
        assert!(
            found[0]
                .message
                .starts_with("spec.postgres.host: \"db.traffic.svc\" is not among"),
            "{}",
            found[0].message
        );
    }

    #[test]
    fn no_tls_section_leaves_every_host_uncovered() {
        let mut policy = example();
        policy.spec.tls = None;
        assert_eq!(
            reasons(&policy.spec),
            [POSTGRES_HOST_NOT_COVERED, KAFKA_BOOTSTRAP_NOT_COVERED]
        );
    }

    #[test]
    fn weaker_ssl_modes_are_reported_verify_full_is_not() {
        let mut policy = example();
        for (mode, expected) in [
            (SslMode::VerifyFull, vec![]),
            (SslMode::VerifyCa, vec![WEAK_SSL_MODE]),
            (SslMode::Require, vec![WEAK_SSL_MODE]),
        ] {
            policy.spec.postgres.as_mut().unwrap().ssl_mode = mode;
            assert_eq!(reasons(&policy.spec), expected, "{mode:?}");
        }
        let found = inconsistencies(&policy.spec);
        assert!(
            found[0]
                .message
                .starts_with("spec.postgres.sslMode: require")
        );
    }

    #[test]
    fn kafka_bootstrap_hosts_are_checked_one_by_one_with_wildcards() {
        let mut policy = example();
        policy.spec.kafka.as_mut().unwrap().bootstrap_servers =
            "kafka-0.kafka-brokers.traffic.svc:9093, kafka.traffic.svc:9093".into();
        assert_eq!(reasons(&policy.spec), Vec::<&str>::new());
        policy.spec.kafka.as_mut().unwrap().bootstrap_servers =
            "a.b.kafka-brokers.traffic.svc:9093,kafka.other.svc:9093,kafka.traffic.svc:9093".into();
        let found = inconsistencies(&policy.spec);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].field, "spec.kafka.bootstrapServers");
        assert!(
            found[0]
                .message
                .contains("\"a.b.kafka-brokers.traffic.svc\", \"kafka.other.svc\" are not among"),
            "{}",
            found[0].message
        );
    }

    #[test]
    fn frontend_to_data_flow_and_external_ingress_to_data_name_their_index() {
        let mut policy = example();
        let network = policy.spec.network.as_mut().unwrap();
        let mut flow = network.flows[0].clone();
        flow.to = "data".into();
        network.flows.push(flow);
        let mut ingress = network.ingress[0].clone();
        ingress.to = "data".into();
        network.ingress.push(ingress);
        let found = inconsistencies(&policy.spec);
        assert_eq!(
            found.iter().map(|i| i.field.as_str()).collect::<Vec<_>>(),
            ["spec.network.flows[3]", "spec.network.ingress[1]"]
        );
        assert_eq!(found[0].reason, FRONTEND_TO_DATA);
        assert!(found[0].message.contains("on port(s) 8443"));
        assert_eq!(found[1].reason, EXTERNAL_INGRESS_TO_DATA);
    }

    #[test]
    fn wildcards_cover_one_label_only() {
        assert!(dns_name_covers("*.svc.example", "a.svc.example"));
        assert!(!dns_name_covers("*.svc.example", "a.b.svc.example"));
        assert!(!dns_name_covers("*.svc.example", "svc.example"));
        assert!(dns_name_covers("DB.example", "db.example."));
    }

    #[test]
    fn bootstrap_servers_parse_with_ipv6_and_without_port() {
        assert_eq!(
            bootstrap_hosts("[::1]:9093, kafka:9092,bare"),
            [
                ("::1".to_string(), 9093),
                ("kafka".to_string(), 9092),
                ("bare".to_string(), 0)
            ]
        );
    }
}
