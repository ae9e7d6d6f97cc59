//! Network facet: NetworkPolicies that default-deny the namespace and open only the declared flows.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use crate::api::{PortSpec, Protocol, SecurityPolicy};
use crate::kube_io::{Facet, produced_meta};

const DNS_PORT: i32 = 53;

pub fn default_deny_name(policy: &str) -> String {
    format!("{policy}-default-deny")
}

pub fn allow_dns_name(policy: &str) -> String {
    format!("{policy}-allow-dns")
}

pub fn tier_policy_name(policy: &str, tier: &str) -> String {
    format!("{policy}-tier-{tier}")
}

/// The NetworkPolicies `policy` asks for, in a stable order. Empty when there is no network section.
pub fn desired_network_policies(policy: &SecurityPolicy) -> Vec<NetworkPolicy> {
    let Some(network) = policy.spec.network.as_ref() else {
        return Vec::new();
    };
    let name = policy.name_any();
    let mut out = Vec::new();

    if network.default_deny {
        out.push(NetworkPolicy {
            metadata: produced_meta(policy, default_deny_name(&name), Facet::Network),
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(LabelSelector::default()),
                policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
                ..NetworkPolicySpec::default()
            }),
        });
    }

    // Without the namespace-wide deny, a podSelector-{} DNS policy would isolate every pod's
    // egress; DNS then rides along in the tier policies that isolate egress anyway.
    if network.allow_dns && network.default_deny {
        out.push(NetworkPolicy {
            metadata: produced_meta(policy, allow_dns_name(&name), Facet::Network),
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(LabelSelector::default()),
                policy_types: Some(vec!["Egress".into()]),
                egress: Some(vec![dns_egress_rule()]),
                ..NetworkPolicySpec::default()
            }),
        });
    }

    for (tier_name, tier) in &policy.spec.tiers {
        let ingress = tier_ingress_rules(policy, tier_name);
        let mut egress = tier_egress_rules(policy, tier_name);
        if !egress.is_empty() && network.allow_dns && !network.default_deny {
            egress.push(dns_egress_rule());
        }
        if ingress.is_empty() && egress.is_empty() {
            continue;
        }
        let mut policy_types = Vec::new();
        if !ingress.is_empty() {
            policy_types.push("Ingress".to_string());
        }
        if !egress.is_empty() {
            policy_types.push("Egress".to_string());
        }
        out.push(NetworkPolicy {
            metadata: produced_meta(policy, tier_policy_name(&name, tier_name), Facet::Network),
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(tier.pod_selector.clone()),
                policy_types: Some(policy_types),
                ingress: (!ingress.is_empty()).then_some(ingress),
                egress: (!egress.is_empty()).then_some(egress),
            }),
        });
    }
    out
}

fn dns_egress_rule() -> NetworkPolicyEgressRule {
    NetworkPolicyEgressRule {
        to: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(match_labels([(
                "kubernetes.io/metadata.name",
                "kube-system",
            )])),
            pod_selector: Some(match_labels([("k8s-app", "kube-dns")])),
            ..NetworkPolicyPeer::default()
        }]),
        ports: Some(vec![
            np_port(DNS_PORT, None, Protocol::Udp),
            np_port(DNS_PORT, None, Protocol::Tcp),
        ]),
    }
}

fn tier_ingress_rules(policy: &SecurityPolicy, tier: &str) -> Vec<NetworkPolicyIngressRule> {
    let Some(network) = policy.spec.network.as_ref() else {
        return Vec::new();
    };
    let from_tiers = network
        .flows
        .iter()
        .filter(|f| f.to == tier)
        .filter_map(|f| {
            let peer = policy.spec.tiers.get(&f.from)?;
            Some(NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    pod_selector: Some(peer.pod_selector.clone()),
                    ..NetworkPolicyPeer::default()
                }]),
                ports: Some(np_ports(&f.ports)),
            })
        });
    let external =
        network
            .ingress
            .iter()
            .filter(|r| r.to == tier)
            .map(|r| NetworkPolicyIngressRule {
                from: Some(r.from.clone()),
                ports: Some(np_ports(&r.ports)),
            });
    from_tiers.chain(external).collect()
}

fn tier_egress_rules(policy: &SecurityPolicy, tier: &str) -> Vec<NetworkPolicyEgressRule> {
    let Some(network) = policy.spec.network.as_ref() else {
        return Vec::new();
    };
    let to_tiers = network
        .flows
        .iter()
        .filter(|f| f.from == tier)
        .filter_map(|f| {
            let peer = policy.spec.tiers.get(&f.to)?;
            Some(NetworkPolicyEgressRule {
                to: Some(vec![NetworkPolicyPeer {
                    pod_selector: Some(peer.pod_selector.clone()),
                    ..NetworkPolicyPeer::default()
                }]),
                ports: Some(np_ports(&f.ports)),
            })
        });
    let external =
        network
            .egress
            .iter()
            .filter(|r| r.from == tier)
            .map(|r| NetworkPolicyEgressRule {
                to: Some(r.to.clone()),
                ports: Some(np_ports(&r.ports)),
            });
    to_tiers.chain(external).collect()
}

fn np_ports(ports: &[PortSpec]) -> Vec<NetworkPolicyPort> {
    ports
        .iter()
        .map(|p| np_port(p.port, p.end_port, p.protocol))
        .collect()
}

fn np_port(port: i32, end_port: Option<i32>, protocol: Protocol) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        end_port,
        protocol: Some(protocol.as_str().to_string()),
    }
}

fn match_labels<const N: usize>(pairs: [(&str, &str); N]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        match_expressions: None,
    }
}

/// What one tier may open on another, as allowed by a set of NetworkPolicies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Every port is reachable (no policy isolates this path).
    All,
    /// Only these ports (protocol, first, last).
    Ports(BTreeSet<(Protocol, i32, i32)>),
}

/// Tier-to-tier reachability of the produced NetworkPolicies, evaluated with Kubernetes'
/// NetworkPolicy semantics on one representative pod per tier: a path is open when the
/// source's egress and the destination's ingress both allow it.
pub fn reachability(
    policy: &SecurityPolicy,
    produced: &[NetworkPolicy],
) -> BTreeMap<(String, String), Reach> {
    let pods: BTreeMap<&String, BTreeMap<String, String>> = policy
        .spec
        .tiers
        .iter()
        .map(|(name, tier)| (name, representative_labels(&tier.pod_selector)))
        .collect();
    let candidates = candidate_ports(policy);
    let mut matrix = BTreeMap::new();
    for (from, from_labels) in &pods {
        for (to, to_labels) in &pods {
            let egress = direction_allows(produced, from_labels, to_labels, Direction::Egress);
            let ingress = direction_allows(produced, to_labels, from_labels, Direction::Ingress);
            let reach = match (egress, ingress) {
                (Reach::All, Reach::All) => Reach::All,
                (Reach::All, Reach::Ports(p)) | (Reach::Ports(p), Reach::All) => Reach::Ports(p),
                (Reach::Ports(a), Reach::Ports(b)) => Reach::Ports(
                    candidates
                        .iter()
                        .filter(|c| covers(&a, c) && covers(&b, c))
                        .copied()
                        .collect(),
                ),
            };
            matrix.insert(((*from).clone(), (*to).clone()), reach);
        }
    }
    matrix
}

/// Peers and ports of one ingress or egress rule.
type RuleView<'a> = (
    Option<&'a Vec<NetworkPolicyPeer>>,
    Option<&'a Vec<NetworkPolicyPort>>,
);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

/// Ports `subject` may use toward (egress) or accept from (ingress) `peer`.
fn direction_allows(
    produced: &[NetworkPolicy],
    subject: &BTreeMap<String, String>,
    peer: &BTreeMap<String, String>,
    direction: Direction,
) -> Reach {
    let type_name = match direction {
        Direction::Ingress => "Ingress",
        Direction::Egress => "Egress",
    };
    let mut isolated = false;
    let mut allowed = BTreeSet::new();
    for np in produced {
        let Some(spec) = np.spec.as_ref() else {
            continue;
        };
        if !selector_matches(spec.pod_selector.as_ref(), subject) {
            continue;
        }
        if !spec
            .policy_types
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|t| t == type_name)
        {
            continue;
        }
        isolated = true;
        let rules: Vec<RuleView<'_>> = match direction {
            Direction::Ingress => spec
                .ingress
                .iter()
                .flatten()
                .map(|r| (r.from.as_ref(), r.ports.as_ref()))
                .collect(),
            Direction::Egress => spec
                .egress
                .iter()
                .flatten()
                .map(|r| (r.to.as_ref(), r.ports.as_ref()))
                .collect(),
        };
        for (peers, ports) in rules {
            let peer_ok = match peers {
                None => true,
                Some(list) if list.is_empty() => true,
                Some(list) => list.iter().any(|p| {
                    p.ip_block.is_none()
                        && p.namespace_selector.is_none()
                        && selector_matches(p.pod_selector.as_ref(), peer)
                }),
            };
            if !peer_ok {
                continue;
            }
            match ports {
                None => return Reach::All,
                Some(list) if list.is_empty() => return Reach::All,
                Some(list) => {
                    for p in list {
                        let protocol = match p.protocol.as_deref() {
                            Some("UDP") => Protocol::Udp,
                            Some("SCTP") => Protocol::Sctp,
                            _ => Protocol::Tcp,
                        };
                        match p.port {
                            Some(IntOrString::Int(first)) => {
                                allowed.insert((protocol, first, p.end_port.unwrap_or(first)));
                            }
                            _ => return Reach::All,
                        }
                    }
                }
            }
        }
    }
    if isolated {
        Reach::Ports(allowed)
    } else {
        Reach::All
    }
}

fn covers(allowed: &BTreeSet<(Protocol, i32, i32)>, port: &(Protocol, i32, i32)) -> bool {
    allowed
        .iter()
        .any(|(proto, first, last)| *proto == port.0 && *first <= port.1 && port.2 <= *last)
}

/// Every port the policy names for tier-to-tier flows: the points at which reachability is evaluated.
fn candidate_ports(policy: &SecurityPolicy) -> BTreeSet<(Protocol, i32, i32)> {
    policy
        .spec
        .network
        .iter()
        .flat_map(|n| n.flows.iter())
        .flat_map(|f| f.ports.iter())
        .map(|p| (p.protocol, p.port, p.end_port.unwrap_or(p.port)))
        .collect()
}

/// Labels of a pod the selector matches (values chosen to satisfy each requirement).
fn representative_labels(selector: &LabelSelector) -> BTreeMap<String, String> {
    let mut labels = selector.match_labels.clone().unwrap_or_default();
    for req in selector.match_expressions.iter().flatten() {
        match req.operator.as_str() {
            "In" => {
                if let Some(v) = req.values.as_ref().and_then(|v| v.first()) {
                    labels.insert(req.key.clone(), v.clone());
                }
            }
            "Exists" => {
                labels
                    .entry(req.key.clone())
                    .or_insert_with(|| "present".into());
            }
            _ => {}
        }
    }
    labels
}

/// True when `selector` selects a pod with `labels`; an absent selector selects every pod.
pub fn selector_matches(
    selector: Option<&LabelSelector>,
    labels: &BTreeMap<String, String>,
) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    labels_ok
        && selector
            .match_expressions
            .iter()
            .flatten()
            .all(|r| requirement_matches(r, labels))
}

fn requirement_matches(req: &LabelSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let value = labels.get(&req.key);
    let values = req.values.as_deref().unwrap_or_default();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        _ => false,
    }
}

/// The reachability matrix as a table: rows are client tiers, columns server tiers.
pub fn render_reachability(matrix: &BTreeMap<(String, String), Reach>, tiers: &[String]) -> String {
    let cell = |reach: &Reach| match reach {
        Reach::All => "all".to_string(),
        Reach::Ports(p) if p.is_empty() => "-".to_string(),
        Reach::Ports(p) => p
            .iter()
            .map(|(proto, first, last)| {
                let range = if first == last {
                    first.to_string()
                } else {
                    format!("{first}-{last}")
                };
                if *proto == Protocol::Tcp {
                    range
                } else {
                    format!("{range}/{}", proto.as_str())
                }
            })
            .collect::<Vec<_>>()
            .join(","),
    };
    let header = std::iter::once("from \\ to".to_string()).chain(tiers.iter().cloned());
    let mut rows: Vec<Vec<String>> = vec![header.collect()];
    for from in tiers {
        let mut row = vec![from.clone()];
        for to in tiers {
            row.push(
                matrix
                    .get(&(from.clone(), to.clone()))
                    .map(cell)
                    .unwrap_or_else(|| "-".into()),
            );
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            r.iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
                + "\n"
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::facets::test_policy as policy;

    const THREE_TIERS: &str = r#"
tiers:
  frontend: {podSelector: {matchLabels: {tier: frontend}}}
  backend:  {podSelector: {matchLabels: {tier: backend}}}
  data:     {podSelector: {matchLabels: {tier: data}}}
network:
  flows:
    - {from: frontend, to: backend, ports: [{port: 8443}]}
    - {from: backend,  to: data,    ports: [{port: 5432}, {port: 9093}]}
    - {from: data,     to: data,    ports: [{port: 9093}, {port: 9094}]}
  ingress:
    - {to: frontend, from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ingress-nginx}}}], ports: [{port: 8443}]}
  egress:
    - {from: backend, to: [{ipBlock: {cidr: 10.20.0.0/16}}], ports: [{port: 443}]}
"#;

    fn names(nps: &[NetworkPolicy]) -> Vec<String> {
        nps.iter().map(|n| n.name_any()).collect()
    }

    #[test]
    fn produces_deny_dns_and_one_policy_per_tier() {
        let nps = desired_network_policies(&policy(THREE_TIERS));
        assert_eq!(
            names(&nps),
            [
                "traffic-default-deny",
                "traffic-allow-dns",
                "traffic-tier-backend",
                "traffic-tier-data",
                "traffic-tier-frontend"
            ]
        );
        for np in &nps {
            let labels = np.labels();
            assert_eq!(labels["app.kubernetes.io/managed-by"], "bulwark");
            assert_eq!(labels["bulwark.dev/policy"], "traffic");
            assert_eq!(labels["bulwark.dev/facet"], "network");
        }
    }

    #[test]
    fn no_network_section_produces_nothing() {
        let p = policy("tiers: {web: {podSelector: {matchLabels: {a: b}}}}");
        assert!(desired_network_policies(&p).is_empty());
    }

    #[test]
    fn disabling_deny_and_dns_drops_those_policies() {
        let p = policy(
            "tiers: {web: {podSelector: {matchLabels: {a: b}}}}\nnetwork: {defaultDeny: false, allowDns: false}",
        );
        assert!(desired_network_policies(&p).is_empty());
    }

    #[test]
    fn backend_policy_has_flows_both_ways_and_external_egress() {
        let nps = desired_network_policies(&policy(THREE_TIERS));
        let backend = nps
            .iter()
            .find(|n| n.name_any() == "traffic-tier-backend")
            .unwrap();
        let spec = backend.spec.as_ref().unwrap();
        assert_eq!(spec.policy_types.as_deref().unwrap(), ["Ingress", "Egress"]);
        assert_eq!(spec.ingress.as_ref().unwrap().len(), 1);
        let egress = spec.egress.as_ref().unwrap();
        assert_eq!(
            egress.len(),
            2,
            "one rule to data, one to the external CIDR"
        );
        assert_eq!(
            egress[1].to.as_ref().unwrap()[0]
                .ip_block
                .as_ref()
                .unwrap()
                .cidr,
            "10.20.0.0/16"
        );
    }

    #[test]
    fn reachability_is_exactly_the_declared_flows() {
        let p = policy(THREE_TIERS);
        let matrix = reachability(&p, &desired_network_policies(&p));
        let ports = |from: &str, to: &str| match &matrix[&(from.to_string(), to.to_string())] {
            Reach::All => vec![-1],
            Reach::Ports(p) => p.iter().map(|(_, first, _)| *first).collect(),
        };
        assert_eq!(ports("frontend", "backend"), [8443]);
        assert_eq!(ports("backend", "data"), [5432, 9093]);
        assert_eq!(ports("data", "data"), [9093, 9094]);
        assert!(
            ports("frontend", "data").is_empty(),
            "frontend must not reach data"
        );
        assert!(ports("data", "backend").is_empty());
        assert!(ports("backend", "frontend").is_empty());
    }

    #[test]
    fn without_default_deny_unlisted_paths_stay_open() {
        let p = policy(
            r#"
tiers:
  a: {podSelector: {matchLabels: {t: a}}}
  b: {podSelector: {matchLabels: {t: b}}}
network: {defaultDeny: false, flows: [{from: a, to: b, ports: [{port: 80}]}]}
"#,
        );
        let matrix = reachability(&p, &desired_network_policies(&p));
        assert_eq!(matrix[&("b".into(), "a".into())], Reach::All);
        let nps = desired_network_policies(&p);
        assert_eq!(
            names(&nps),
            ["traffic-tier-a", "traffic-tier-b"],
            "no namespace-wide DNS policy"
        );
        let a_egress = nps[0].spec.as_ref().unwrap().egress.as_ref().unwrap();
        assert_eq!(a_egress.len(), 2, "the flow to b plus DNS");
        assert_eq!(
            matrix[&("a".into(), "b".into())],
            Reach::Ports([(Protocol::Tcp, 80, 80)].into())
        );
    }

    #[test]
    fn matrix_renders_as_a_table() {
        let p = policy(THREE_TIERS);
        let matrix = reachability(&p, &desired_network_policies(&p));
        let tiers: Vec<String> = p.spec.tiers.keys().cloned().collect();
        let table = render_reachability(&matrix, &tiers);
        assert!(
            table.contains("backend    -        5432,9093  -"),
            "{table}"
        );
    }
}
