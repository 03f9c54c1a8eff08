//! One document section per part of the report, in plain words for an auditor.

use super::*;

pub(super) fn section_parties(r: &Report) -> Section {
    let rows = r
        .parties
        .iter()
        .map(|p| {
            vec![
                p.party.clone(),
                role_label(&p.role),
                or_unknown(&p.organisation),
                or_unknown(&p.software),
                thousands(p.records_in_period),
                match (&p.first_record, &p.last_record) {
                    (Some(a), Some(b)) => format!("{a} to {b}"),
                    _ => "no records in this period".to_string(),
                },
            ]
        })
        .collect();
    Section {
        title: "1. Logs included",
        explain: "Every party in the federation keeps its own tamper-evident log of what it did. This report was \
                  built from these logs.",
        blocks: vec![table(
            vec!["Party", "Role", "Organisation", "Software", "Records in period", "First and last record"],
            rows,
        )],
    }
}

pub(super) fn section_analyses(r: &Report) -> Section {
    let mut blocks = Vec::new();
    for a in &r.analyses {
        let outcome = match a.outcome {
            Outcome::Released => format!("released {}", a.outcome_at.clone().unwrap_or_default()),
            Outcome::Failed => {
                format!("failed {}: {}", a.outcome_at.clone().unwrap_or_default(), a.failure_reasons.join("; "))
            }
            Outcome::NoOutcomeRecorded => "no release or failure recorded in the logs read".to_string(),
        };
        let mut fields = vec![
            ("Requested", a.requested_at.clone().unwrap_or_else(|| "the request is not in the logs read".to_string())),
            ("Kind of analysis", or_unknown(&a.kind)),
            ("Requested by", who(&a.analyst, &a.analyst_organisation)),
            ("Purpose", or_unknown(&a.purpose)),
            ("Outcome", outcome),
        ];
        if a.outcome == Outcome::Released && !a.failure_reasons.is_empty() {
            fields.push(("Earlier failures", a.failure_reasons.join("; ")));
        }
        let names: Vec<String> = a.participants.iter().map(|p| who(&p.name, &p.organisation)).collect();
        let label = match a.participants_from {
            ParticipantSource::Contributors => "Nodes whose data is in the result",
            ParticipantSource::Invited => "Nodes invited (no result was released)",
            ParticipantSource::Unknown => "Participating nodes",
        };
        fields.push((label, list_or(&names, "not recorded")));
        fields.push(("Rounds run", a.rounds.to_string()));
        fields.push(("Nodes that declined or left", list_or(&a.declined, "none")));
        if !a.parameters.is_null() {
            fields.push(("Parameters (technical)", a.parameters.to_string()));
        }
        blocks.push(Block::Item { title: format!("Analysis {}", a.analysis), fields });
    }
    if blocks.is_empty() {
        blocks.push(Block::Para(NONE.to_string()));
    }
    if !r.round_views.is_empty() {
        let rows = r
            .round_views
            .iter()
            .map(|v| {
                vec![
                    v.at.clone(),
                    who(&v.node, &v.organisation),
                    v.analysis.clone().unwrap_or_else(|| "unknown".to_string()),
                    v.round.clone(),
                    match v.stage.as_str() {
                        crate::record::ROUND_VIEW_SIGNED => "signed the list of participants".to_string(),
                        crate::record::ROUND_VIEW_UNMASKED => "revealed its shares".to_string(),
                        other => or_unknown(other),
                    },
                    list_or(&v.delivered, "none"),
                    list_or(&v.survivors, "none"),
                    list_or(&v.signers, "–"),
                ]
            })
            .collect();
        blocks.push(Block::Sub("Who took part in each round, as each node saw it".to_string()));
        blocks.push(table(
            vec![
                "When",
                "Node",
                "Analysis",
                "Round",
                "Step",
                "Shares delivered (U2)",
                "Inputs in the sum (U3)",
                "Signatures checked",
            ],
            rows,
        ));
    }
    Section {
        title: "2. Analyses run",
        explain: "Each analysis is a question HQ's analysts asked of all stores' data together, with the purpose \
                  they gave. Only combined totals leave the coordinator; no customer records are shared.",
        blocks,
    }
}

pub(super) fn section_egress(r: &Report) -> Section {
    let mut rows: Vec<Vec<String>> = r
        .egress
        .iter()
        .map(|e| vec![e.node.clone(), or_unknown(&e.organisation), thousands(e.messages), human_bytes(e.bytes)])
        .collect();
    if !rows.is_empty() {
        rows.push(vec![
            format!("All {} nodes", r.egress_total.nodes),
            String::new(),
            thousands(r.egress_total.messages),
            human_bytes(r.egress_total.bytes),
        ]);
    }
    let by = |pick: fn(&NodeEgress) -> &Vec<EgressPart>| -> Vec<Vec<String>> {
        r.egress
            .iter()
            .flat_map(|e| {
                pick(e)
                    .iter()
                    .map(|p| vec![e.node.clone(), p.name.clone(), thousands(p.messages), human_bytes(p.bytes)])
            })
            .collect()
    };
    let mut blocks = vec![table(vec!["Node", "Organisation", "Messages sent", "Total sent"], rows)];
    if !r.egress.iter().all(|e| e.by_kind.is_empty()) {
        blocks.push(Block::Sub("By kind of analysis".to_string()));
        blocks.push(table(vec!["Node", "Kind of analysis", "Messages", "Sent"], by(|e| &e.by_kind)));
        blocks.push(Block::Sub("By message type".to_string()));
        blocks.push(table(vec!["Node", "Message type", "Messages", "Sent"], by(|e| &e.by_message)));
    }
    Section {
        title: "3. Data sent by each node",
        explain: "Everything that left each node (the data server at HQ or at a franchisee) in this period, as the \
                  node recorded it before sending: number of messages and exact sizes. Only sizes and fingerprints \
                  are logged, never contents.",
        blocks,
    }
}

pub(super) fn section_refusals(r: &Report) -> Section {
    let rows = r
        .refusals
        .iter()
        .map(|x| {
            vec![
                if x.first_at == x.last_at { x.first_at.clone() } else { format!("{} to {}", x.first_at, x.last_at) },
                who(&x.node, &x.organisation),
                match x.source {
                    RefusalSource::Node => format!("the node's own policy ({} log)", x.recorded_by),
                    RefusalSource::Coordinator => format!("the coordinator ({} log)", x.recorded_by),
                },
                match (&x.analysis, &x.kind) {
                    (Some(a), Some(k)) => format!("{a} ({k})"),
                    (Some(a), None) => a.clone(),
                    _ => "unknown".to_string(),
                },
                list_or(&x.rounds, "–"),
                x.reason.clone(),
                x.count.to_string(),
            ]
        })
        .collect();
    Section {
        title: "4. Refusals and why",
        explain: "Times a node declined to take part in an analysis, or left one, and the reason given. Nodes refuse \
                  automatically when a request does not meet their privacy policy.",
        blocks: vec![table(vec!["When", "Node", "Recorded by", "Analysis", "Rounds", "Reason", "Times"], rows)],
    }
}

pub(super) fn section_thresholds(r: &Report) -> Section {
    let rows = r
        .thresholds
        .iter()
        .map(|t| {
            vec![
                t.released_at.clone(),
                t.analysis.clone(),
                or_unknown(&t.kind),
                t.min_participants.to_string(),
                format!("{}{}", t.contributors, if t.meets_min_participants { "" } else { " (BELOW MINIMUM)" }),
                t.min_cohort.to_string(),
                thousands(t.cells),
                thousands(t.suppressed),
            ]
        })
        .collect();
    let policy = r
        .policy_decisions
        .iter()
        .map(|p| vec![who(&p.node, &p.organisation), thousands(p.admitted), thousands(p.refused)])
        .collect();
    Section {
        title: "5. Thresholds enforced",
        explain: "Before a result is released the coordinator checks that enough nodes contributed and that every \
                  number in it describes enough customers that no one can be singled out. Each node also checks \
                  every request against its own policy.",
        blocks: vec![
            table(
                vec![
                    "Released",
                    "Analysis",
                    "Kind",
                    "Minimum nodes",
                    "Nodes contributing",
                    "Minimum customers per cell",
                    "Cells",
                    "Cells suppressed",
                ],
                rows,
            ),
            Block::Sub("Node policy decisions".to_string()),
            table(vec!["Node", "Requests admitted", "Requests refused"], policy),
        ],
    }
}

pub(super) fn section_suppressed(r: &Report) -> Section {
    let s = &r.suppressed;
    let mut blocks = Vec::new();
    if s.per_analysis.is_empty() {
        blocks.push(Block::Para(NONE.to_string()));
    } else {
        blocks.push(Block::Para(format!(
            "In total {} of {} cells ({}) were suppressed.",
            thousands(s.total_suppressed),
            thousands(s.total_cells),
            percent(s.total_suppressed, s.total_cells)
        )));
        let rows = s
            .per_analysis
            .iter()
            .map(|a| {
                vec![
                    a.analysis.clone(),
                    or_unknown(&a.kind),
                    a.releases.to_string(),
                    thousands(a.cells),
                    thousands(a.suppressed),
                    percent(a.suppressed, a.cells),
                ]
            })
            .collect();
        blocks.push(table(vec!["Analysis", "Kind", "Releases", "Cells", "Suppressed", "Share suppressed"], rows));
    }
    Section {
        title: "6. Suppressed cells",
        explain: "Cells (numbers in a result table) that described too few customers were withheld rather than \
                  released, so that no individual can be recognised.",
        blocks,
    }
}

/// The unit of a node's budget (`ε` or `ρ`), from its budget in words.
fn budget_unit(budget: &str) -> &'static str {
    if budget.starts_with('ε') {
        " (ε)"
    } else if budget.starts_with('ρ') {
        " (ρ)"
    } else {
        ""
    }
}

/// Charges and Σρ as one cell, or "not read" when that log was not read.
fn charges_cell(t: Option<&ChargeTotals>) -> String {
    match t {
        Some(t) => format!("{} (Σρ {})", count(t.charges, "charge", "charges"), real(t.rho)),
        None => "log not read".to_string(),
    }
}

pub(super) fn section_privacy(r: &Report) -> Section {
    let p = &r.privacy;
    let mut blocks = Vec::new();
    if p.months.is_empty() {
        blocks.push(Block::Para(NONE.to_string()));
    }
    let mut coordinator_only: Vec<String> = Vec::new();
    let rows: Vec<Vec<String>> = p
        .months
        .iter()
        .map(|m| {
            let node = who(&m.node, &m.organisation);
            let coordinator = charges_cell(m.coordinator_log.as_ref());
            match (&m.node_log, &m.coordinator_log) {
                (Some(o), _) => vec![
                    node,
                    m.month.clone(),
                    thousands(o.charges),
                    real(o.rho),
                    real(o.xi),
                    o.last_charge_at.clone().unwrap_or_else(|| "–".to_string()),
                    match (o.used, o.limit) {
                        (Some(used), Some(limit)) => {
                            format!("{} of {}{}", real(used), real(limit), budget_unit(&o.budget))
                        }
                        _ => "–".to_string(),
                    },
                    if o.budget.is_empty() { "–".to_string() } else { o.budget.clone() },
                    coordinator,
                ],
                (None, seen) => {
                    if !coordinator_only.contains(&m.node) {
                        coordinator_only.push(m.node.clone());
                    }
                    let seen = seen.clone().unwrap_or_default();
                    vec![
                        node,
                        m.month.clone(),
                        format!("{} (coordinator's log; the node's own log was not read)", thousands(seen.charges)),
                        real(seen.rho),
                        real(seen.xi),
                        "–".to_string(),
                        "not known without the node's own log".to_string(),
                        "not known without the node's own log".to_string(),
                        coordinator,
                    ]
                }
            }
        })
        .collect();
    if !rows.is_empty() {
        blocks.push(table(
            vec![
                "Node",
                "Month (UTC)",
                "Charges",
                "Σρ",
                "Σξ",
                "Last charge",
                "Spent of the month's limit after it",
                "Monthly budget",
                "Coordinator's log",
            ],
            rows,
        ));
        blocks.push(Block::Para(
            "Charges, Σρ and Σξ count the charges in this period, from the node's own log. \"Spent of the month's \
             limit\" is the whole month's spending as the node itself computed it after its last charge in this \
             period (it includes any charges earlier in the month), in the unit of its budget."
                .to_string(),
        ));
        if !coordinator_only.is_empty() {
            blocks.push(Block::Para(format!(
                "The own logs of {} were not read: their rows show the coordinator's records of their charges, \
                 which could not be checked against the nodes' own.",
                coordinator_only.join(", ")
            )));
        }
        let per_analysis = p
            .months
            .iter()
            .flat_map(|m| {
                m.per_analysis.iter().map(|a| {
                    vec![
                        m.node.clone(),
                        m.month.clone(),
                        a.analysis.clone(),
                        or_unknown(&a.kind),
                        charges_cell(a.node_log.as_ref()),
                        charges_cell(a.coordinator_log.as_ref()),
                    ]
                })
            })
            .collect();
        blocks.push(Block::Sub("Charges per analysis".to_string()));
        blocks.push(table(
            vec!["Node", "Month (UTC)", "Analysis", "Kind", "Node's own log", "Coordinator's log"],
            per_analysis,
        ));
        blocks.push(Block::Sub("Charges the node's log and the coordinator's disagree on".to_string()));
        if !p.coordinator_log_read {
            blocks.push(Block::Para("Not compared: the coordinator's log was not read.".to_string()));
        } else if p.mismatches.is_empty() {
            blocks.push(Block::Para(
                "None: every charge in the nodes' logs read is also in the coordinator's log with the same ρ, and \
                 the reverse."
                    .to_string(),
            ));
        } else {
            blocks.push(Block::Para(
                "A charge in a node's log that the coordinator's log does not have means the node charged its budget \
                 but its contribution never arrived — for example the node crashed, or the network failed, between \
                 the charge and the send. The node lost budget without anything being released, which is safe for \
                 privacy. A charge in the coordinator's log that the node's log does not have should never happen \
                 with an honest node: it points to a node log that was cut short or to an error at the coordinator, \
                 and should be investigated. A different ρ means the two sides computed the same charge differently. \
                 Logs copied at different times can also differ on the latest charges: compare each log's last \
                 record in section 1."
                    .to_string(),
            ));
            let rows = p
                .mismatches
                .iter()
                .map(|x| {
                    let rho = |v: Option<f64>| v.map_or_else(|| "–".to_string(), real);
                    vec![
                        x.at.clone(),
                        who(&x.node, &x.organisation),
                        x.analysis.clone(),
                        x.round.clone(),
                        match x.kind {
                            MismatchKind::MissingFromCoordinatorLog => format!(
                                "MISSING FROM THE COORDINATOR'S LOG: the node charged ρ = {} but the coordinator \
                                 did not record its contribution arriving",
                                rho(x.node_rho)
                            ),
                            MismatchKind::MissingFromNodeLog => format!(
                                "MISSING FROM THE NODE'S LOG: the coordinator recorded a charge of ρ = {} that the \
                                 node's own log does not have",
                                rho(x.coordinator_rho)
                            ),
                            MismatchKind::RhoDiffers => format!(
                                "DIFFERENT ρ: {} in the node's log, {} in the coordinator's log",
                                rho(x.node_rho),
                                rho(x.coordinator_rho)
                            ),
                        },
                    ]
                })
                .collect();
            blocks.push(table(vec!["When", "Node", "Analysis", "Round", "What the logs show"], rows));
        }
    }
    Section {
        title: "7. Privacy budget",
        explain: "Differential privacy adds random noise to what each franchisee's node sends, so that no result can \
                  reveal whether any one customer is in the data. ε (epsilon) — and ρ (rho), the finer unit each \
                  charge is computed in — measure how much results may reveal about one customer: the smaller, the \
                  more private. Each analysis a node takes part in is charged against that node's limit for the \
                  calendar month (UTC). Each franchisee's node enforces its own budget: it records the charge in its \
                  own log just before its noised contribution leaves, and refuses to take part once the month's \
                  limit would be exceeded. The coordinator records the same charge when the contribution arrives, so \
                  the two logs can be checked against each other.",
        blocks,
    }
}

pub(super) fn section_approvals(r: &Report) -> Section {
    let counts = r
        .approval_counts
        .iter()
        .map(|c| {
            vec![who(&c.node, &c.organisation), c.requested.to_string(), c.granted.to_string(), c.expired.to_string()]
        })
        .collect();
    let rows = r
        .approvals
        .iter()
        .map(|a| {
            vec![
                a.requested_at.clone().unwrap_or_else(|| "not in the logs read".to_string()),
                who(&a.node, &a.organisation),
                a.id.clone(),
                a.analysis.clone(),
                or_unknown(&a.purpose),
                or_unknown(&a.requested_by),
                match a.outcome {
                    ApprovalOutcome::Granted => format!(
                        "granted by {} at {}",
                        a.decided_by.clone().unwrap_or_default(),
                        a.decided_at.clone().unwrap_or_default()
                    ),
                    ApprovalOutcome::Expired => {
                        format!("expired at {} without approval", a.decided_at.clone().unwrap_or_default())
                    }
                    ApprovalOutcome::Pending => {
                        format!("waiting (expires {})", a.expires_at.clone().unwrap_or_else(|| "unknown".to_string()))
                    }
                },
            ]
        })
        .collect();
    let mut blocks = vec![table(vec!["Node", "Requests", "Granted", "Expired"], counts)];
    if !r.approvals.is_empty() {
        blocks.push(Block::Sub("Each request".to_string()));
        blocks.push(table(vec!["Requested", "Node", "Request", "Analysis", "Purpose", "Asked by", "Outcome"], rows));
    }
    Section {
        title: "8. Manual approvals",
        explain: "Some franchisees require a person to approve each request before their data takes part. A request \
                  not approved in time expires and the node does not take part.",
        blocks,
    }
}

pub(super) fn section_models(r: &Report) -> Section {
    let published = r
        .models
        .iter()
        .map(|m| {
            vec![m.published_at.clone(), m.model.clone(), m.version.clone(), m.published_by.clone(), m.sha256.clone()]
        })
        .collect();
    let scoring = r
        .scoring
        .iter()
        .map(|s| {
            vec![
                s.at.clone(),
                who(&s.node, &s.organisation),
                s.model.clone(),
                s.version.clone(),
                thousands(s.customers),
            ]
        })
        .collect();
    Section {
        title: "9. Models",
        explain: "Trained models published for use, and each time a model was applied inside a node to that store's \
                  own customers (the customer data stays there).",
        blocks: vec![
            Block::Sub("Model versions published".to_string()),
            table(vec!["Published", "Model", "Version", "Published by", "Fingerprint (SHA-256)"], published),
            Block::Sub("Local scoring runs".to_string()),
            table(vec!["When", "Node", "Model", "Version", "Customers scored"], scoring),
        ],
    }
}

pub(super) fn section_certificates(r: &Report) -> Section {
    let certs = r
        .certificates
        .iter()
        .map(|c| {
            vec![
                c.issued_at.clone(),
                c.name.clone(),
                or_unknown(&c.organisation),
                role_label(&c.role),
                c.serial_hex.clone(),
                c.not_after.clone(),
                c.sha256.clone(),
            ]
        })
        .collect();
    let sessions = r
        .sessions
        .iter()
        .map(|s| {
            vec![
                s.recorded_by.clone(),
                who(&s.peer, &s.organisation),
                role_label(&s.role),
                s.opened.to_string(),
                s.closed.to_string(),
                list_or(&s.close_reasons, "–"),
            ]
        })
        .collect();
    Section {
        title: "10. Certificates and connections",
        explain: "The brand's certificate authority gives every party a digital identity (a certificate). Parties \
                  connect only over sessions authenticated with these identities.",
        blocks: vec![
            Block::Sub("Certificates issued".to_string()),
            table(
                vec!["Issued", "Name", "Organisation", "Role", "Serial", "Valid until", "Fingerprint (SHA-256)"],
                certs,
            ),
            Block::Sub("Certificates revoked".to_string()),
            table(
                vec!["Revoked", "Name", "Organisation", "Serial", "Reason", "CRL number"],
                r.revocations
                    .iter()
                    .map(|x| {
                        vec![
                            x.revoked_at.clone(),
                            x.name.clone(),
                            or_unknown(&x.organisation),
                            x.serial_hex.clone(),
                            x.reason.clone(),
                            x.crl_number.to_string(),
                        ]
                    })
                    .collect(),
            ),
            Block::Sub("Sessions".to_string()),
            table(vec!["Log", "Peer", "Peer's role", "Opened", "Closed", "Reasons for closing"], sessions),
            Block::Sub("Nodes the coordinator accepts (enrolment)".to_string()),
            table(
                vec!["Node", "Organisation"],
                r.enrolment.iter().map(|p| vec![p.name.clone(), or_unknown(&p.organisation)]).collect(),
            ),
            Block::Sub("Connections refused, and messages dropped unread".to_string()),
            table(
                vec!["When", "Recorded by", "Who tried", "Organisation", "Why refused"],
                r.refused_sessions
                    .iter()
                    .map(|x| {
                        vec![
                            x.at.clone(),
                            x.recorded_by.clone(),
                            x.peer.clone(),
                            or_unknown(&x.organisation),
                            x.reason.clone(),
                        ]
                    })
                    .collect(),
            ),
        ],
    }
}

pub(super) fn section_integrity(r: &Report) -> Section {
    let notes = r
        .integrity
        .iter()
        .map(|n| {
            let what = match n.kind {
                IntegrityKind::RetentionDeleted => format!(
                    "{} log file(s) older than the {}-day retention period deleted; the log continues from record {}",
                    n.files.len(),
                    n.retention_days.unwrap_or_default(),
                    n.upto_seq.unwrap_or_default()
                ),
                IntegrityKind::TornTailRecovered => format!(
                    "after a crash, an incomplete last line ({}, SHA-256 {}) was set aside; it had never been \
                     acknowledged",
                    human_bytes(n.bytes.unwrap_or_default()),
                    n.sha256.clone().unwrap_or_default()
                ),
            };
            vec![n.at.clone(), n.party.clone(), what, n.files.join(", ")]
        })
        .collect();
    let seals = r
        .seals
        .iter()
        .map(|s| {
            vec![
                s.party.clone(),
                thousands(s.seals),
                s.last_sealed_seq.map_or_else(|| "–".to_string(), |q| q.to_string()),
            ]
        })
        .collect();
    Section {
        title: "11. Log integrity notes",
        explain: "Events affecting the logs themselves: old files deleted at the end of the retention period, and \
                  recovery from an incomplete line after a crash. Seals are regular digital signatures over a log \
                  that make any later change detectable.",
        blocks: vec![
            Block::Sub("Retention and recovery".to_string()),
            table(vec!["When", "Party", "What happened", "Files"], notes),
            Block::Sub("Seals".to_string()),
            table(vec!["Party", "Seals in period", "Last record sealed"], seals),
        ],
    }
}
