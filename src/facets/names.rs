//! The Secret names a policy claims, across facets.
//!
//! Every facet writes (or, for a CA you bring, reads) Secrets whose names come from the spec or
//! from defaults derived from the policy's and the entries' names. Two claims on one name would
//! have two writers take turns on one Secret; a default that is not a valid object name would
//! fail every write. Both are spec errors only the operator can see (admission knows neither the
//! defaults nor the policy name), so they are found here, before any facet runs, and reported on
//! the facet of the later claim, naming its field.
//!
//! Claims are taken in a fixed order, so the same spec always blames the same entry: first each
//! facet's own Secrets (the CA, the PostgreSQL verifiers, the Kafka salted credentials and
//! broker JAAS), then certificates, PostgreSQL roles, Kafka users and JWT keys in spec order.

use std::collections::BTreeMap;

use kube::ResourceExt;

use super::{kafka, postgres, tls};
use crate::api::SecurityPolicy;
use crate::kube_io::Facet;

/// One Secret name some part of the spec claims.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Claim {
    facet: Facet,
    /// The spec field the name comes from, e.g. `spec.kafka.users[0]` for a default name or
    /// `spec.jwt[1].secretName` for an explicit one.
    field: String,
    /// What the Secret is, for messages.
    what: String,
    name: String,
    /// Derived from other names rather than written in the spec.
    default: bool,
}

/// Each facet whose Secret names cannot be used, with a message naming the field. A facet listed
/// here must not be reconciled: it would fight another writer or fail every write.
pub fn secret_name_problems(policy: &SecurityPolicy) -> BTreeMap<Facet, String> {
    let mut problems = BTreeMap::new();
    let mut taken: BTreeMap<&str, &Claim> = BTreeMap::new();
    let claims = claims(policy);
    for claim in &claims {
        let problem = if claim.default && !is_dns_subdomain(&claim.name) {
            Some(format!(
                "{}: the default Secret name {:?} of {} is not a valid object name; set secretName",
                claim.field, claim.name, claim.what
            ))
        } else if let Some(first) = taken.get(claim.name.as_str()) {
            Some(format!(
                "{}: Secret {:?} ({}) is also the Secret of {} ({}); give one of them another secretName",
                claim.field, claim.name, claim.what, first.field, first.what
            ))
        } else {
            taken.insert(&claim.name, claim);
            None
        };
        if let Some(message) = problem {
            // The first problem of a facet is the one reported.
            problems.entry(claim.facet).or_insert(message);
        }
    }
    problems
}

/// `policy` with the sections of `facets` removed: what the reconcile sees of a facet it must
/// leave alone.
pub fn without_facets<'a>(
    policy: &SecurityPolicy,
    facets: impl Iterator<Item = &'a Facet>,
) -> SecurityPolicy {
    let mut policy = policy.clone();
    for facet in facets {
        let spec = &mut policy.spec;
        match facet {
            Facet::Tls => spec.tls = None,
            Facet::Network => spec.network = None,
            Facet::Kafka => spec.kafka = None,
            Facet::Postgres => spec.postgres = None,
            Facet::Jwt => spec.jwt = None,
        }
    }
    policy
}

fn claims(policy: &SecurityPolicy) -> Vec<Claim> {
    let p = policy.name_any();
    let spec = &policy.spec;
    let mut own = Vec::new();
    let mut entries = Vec::new();
    let claim = |facet, field: String, what: String, name: String, default| Claim {
        facet,
        field,
        what,
        name,
        default,
    };
    if let Some(t) = &spec.tls {
        let ca = t.ca.as_ref();
        let (field, default) = match ca {
            Some(c) if c.existing_secret.is_some() => ("spec.tls.ca.existingSecret", false),
            Some(c) if c.secret_name.is_some() => ("spec.tls.ca.secretName", false),
            _ => ("spec.tls.ca", true),
        };
        if let Some(name) = tls::ca_secret_name(policy) {
            own.push(claim(
                Facet::Tls,
                field.into(),
                "the CA".into(),
                name,
                default,
            ));
        }
        for (i, c) in t.certificates.iter().enumerate() {
            entries.push(claim(
                Facet::Tls,
                format!("spec.tls.certificates[{i}].secretName"),
                format!("certificate {}", c.name),
                c.secret_name.clone(),
                false,
            ));
        }
    }
    if let Some(pg) = &spec.postgres {
        own.push(claim(
            Facet::Postgres,
            "spec.postgres".into(),
            "the PostgreSQL verifiers".into(),
            postgres::verifiers_secret_name(&p),
            true,
        ));
        for (i, r) in pg.roles.iter().enumerate() {
            let field = match r.secret_name {
                Some(_) => format!("spec.postgres.roles[{i}].secretName"),
                None => format!("spec.postgres.roles[{i}]"),
            };
            entries.push(claim(
                Facet::Postgres,
                field,
                format!("role {}", r.name),
                postgres::role_secret_name(&p, r),
                r.secret_name.is_none(),
            ));
        }
    }
    if let Some(k) = &spec.kafka {
        for (name, what) in [
            (kafka::scram_secret_name(&p), "the Kafka salted credentials"),
            (kafka::jaas_secret_name(&p), "the Kafka broker JAAS"),
        ] {
            own.push(claim(
                Facet::Kafka,
                "spec.kafka".into(),
                what.into(),
                name,
                true,
            ));
        }
        for (i, u) in k.users.iter().enumerate() {
            let field = match u.secret_name {
                Some(_) => format!("spec.kafka.users[{i}].secretName"),
                None => format!("spec.kafka.users[{i}]"),
            };
            entries.push(claim(
                Facet::Kafka,
                field,
                format!("Kafka user {}", u.name),
                kafka::user_secret_name(&p, u),
                u.secret_name.is_none(),
            ));
        }
    }
    for (i, j) in spec.jwt.iter().flatten().enumerate() {
        entries.push(claim(
            Facet::Jwt,
            format!("spec.jwt[{i}].secretName"),
            format!("JWT key {}", j.name),
            j.secret_name.clone(),
            false,
        ));
    }
    own.extend(entries);
    own
}

/// An RFC 1123 subdomain as the API server checks a Secret's name: at most 253 characters,
/// dot-separated runs of lowercase letters, digits and `-` that start and end alphanumeric.
pub fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(spec: &str) -> BTreeMap<Facet, String> {
        secret_name_problems(&crate::facets::test_policy(spec))
    }

    #[test]
    fn the_example_claims_every_name_once() {
        let spec = concat!(
            "tiers: {}\n",
            "tls: {certificates: [{name: api, secretName: api-tls, dnsNames: [api]}]}\n",
            "postgres: {host: db, database: d, roles: [{name: app_rw, access: ReadWrite}]}\n",
            "kafka: {bootstrapServers: 'k:9093', users: [{name: app}]}\n",
            "jwt: [{name: api, secretName: api-jwt}]\n",
        );
        assert_eq!(problems(spec), BTreeMap::new());
    }

    #[test]
    fn a_default_taken_by_an_earlier_claim_blames_the_later_entry() {
        let p = problems(
            "tiers: {}\ntls: {certificates: [{name: api, secretName: traffic-kafka-app, dnsNames: [api]}]}\nkafka: {bootstrapServers: 'k:9093', users: [{name: app}]}",
        );
        assert_eq!(p.keys().collect::<Vec<_>>(), [&Facet::Kafka]);
        let m = &p[&Facet::Kafka];
        assert!(m.starts_with("spec.kafka.users[0]: "), "{m}");
        assert!(m.contains("spec.tls.certificates[0].secretName"), "{m}");
    }

    #[test]
    fn the_facets_own_secrets_come_first() {
        let p = problems("tiers: {}\ntls: {}\njwt: [{name: api, secretName: traffic-ca}]");
        assert!(p[&Facet::Jwt].starts_with("spec.jwt[0].secretName: "));
        assert!(!p.contains_key(&Facet::Tls));
        let p = problems(
            "tiers: {}\npostgres: {host: db, database: d, roles: [{name: verifiers, access: ReadOnly}]}",
        );
        assert!(p[&Facet::Postgres].starts_with("spec.postgres.roles[0]: "));
        let p = problems(
            "tiers: {}\npostgres: {host: db, database: d}\nkafka: {bootstrapServers: 'k:9093', users: [{name: app, secretName: traffic-pg-verifiers}]}",
        );
        assert!(p[&Facet::Kafka].starts_with("spec.kafka.users[0].secretName: "));
        assert!(!p.contains_key(&Facet::Postgres));
    }

    #[test]
    fn entries_with_the_same_default_blame_the_second() {
        let p = problems(
            "tiers: {}\npostgres: {host: db, database: d, roles: [{name: app_ro, access: ReadOnly}, {name: app$ro, access: ReadOnly}]}",
        );
        assert!(p[&Facet::Postgres].starts_with("spec.postgres.roles[1]: "));
        let p = problems(
            "tiers: {}\nkafka: {bootstrapServers: 'k:9093', users: [{name: a_b}, {name: a-b}]}",
        );
        assert!(p[&Facet::Kafka].starts_with("spec.kafka.users[1]: "));
    }

    #[test]
    fn invalid_default_names_name_the_entry() {
        let p = problems("tiers: {}\nkafka: {bootstrapServers: 'k:9093', users: [{name: a..b}]}");
        assert!(p[&Facet::Kafka].starts_with("spec.kafka.users[0]: the default Secret name"));
        let p = problems(
            "tiers: {}\npostgres: {host: db, database: d, roles: [{name: _, access: ReadOnly}]}",
        );
        assert!(p[&Facet::Postgres].starts_with("spec.postgres.roles[0]: "));
        // An explicit secretName is the CRD's to check, and lifts the problem.
        let p = problems(
            "tiers: {}\npostgres: {host: db, database: d, roles: [{name: _, access: ReadOnly, secretName: pg-u}]}",
        );
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn subdomains() {
        for ok in ["a", "a-b.c", "0.1", &"a".repeat(64)] {
            assert!(is_dns_subdomain(ok), "{ok}");
        }
        for bad in ["", "a..b", "-a", "a-", "A", "a_b", &"a".repeat(254), ".a"] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }
}
