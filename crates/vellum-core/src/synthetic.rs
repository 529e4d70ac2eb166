//! The synthetic audit events of `vellum bench` and of the benchmarks: realistic healthcare
//! traffic (FHIR reads and writes, logins, exports, admin changes) of about 1.1 KB each, one in
//! eight carrying PII for the redactor. Deterministic for a given seed, so a figure can be
//! reproduced and two programs (the load generator, the forwarding bench) load the same events.

use serde_json::{Value, json};

/// `(action, targetResourceType, dataClassification)` of the generated events.
pub const ACTIONS: &[(&str, &str, &str)] = &[
    ("fhir.patient.read", "Patient", "PHI"),
    ("fhir.observation.read", "Observation", "PHI"),
    ("fhir.observation.create", "Observation", "PHI"),
    ("fhir.medicationrequest.update", "MedicationRequest", "PHI"),
    ("auth.login.success", "Session", "INTERNAL"),
    ("auth.login.failure", "Session", "CONFIDENTIAL"),
    ("admin.config.change", "Configuration", "CONFIDENTIAL"),
    ("report.export", "Report", "CONFIDENTIAL"),
    ("billing.invoice.read", "Invoice", "CONFIDENTIAL"),
    ("system.backup.complete", "Backup", "INTERNAL"),
];

/// Deterministic pseudo-random numbers (xorshift), so runs are reproducible.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Event number `n` of the workload, drawn from `rng`.
pub fn synthetic_event(rng: &mut Rng, n: u64) -> Value {
    let (action, resource, class) =
        ACTIONS[usize::try_from(rng.below(ACTIONS.len() as u64)).unwrap_or(0)];
    let org = format!("org-{}", rng.below(12));
    let principal = format!("dr-{}", rng.below(500));
    let patient = format!("patient-{:06}", rng.below(50_000));
    let status = if action.ends_with("failure") {
        "failure"
    } else if rng.below(20) == 0 {
        "warning"
    } else {
        "success"
    };
    const DEPARTMENTS: [&str; 5] = [
        "cardiology",
        "oncology",
        "emergency",
        "radiology",
        "pediatrics",
    ];
    let department = DEPARTMENTS[usize::try_from(rng.below(5)).unwrap_or(0)];
    let mut event = json!({
        "action": action,
        "status": status,
        "principalId": principal,
        "principalType": if rng.below(10) == 0 { "service" } else { "professional" },
        "organizationId": org,
        "targetResourceType": resource,
        "targetResourceId": format!("{}-{}", resource.to_ascii_lowercase(), rng.below(1_000_000)),
        "outcomeDescription": format!("{principal} performed {action} on {resource} for {patient} during routine care, request {n}"),
        "dataClassification": class,
        "correlationId": format!("corr-{:016x}", rng.next_u64()),
        "sessionContext": {
            "sessionId": format!("sess-{:012x}", rng.next_u64() & 0xffff_ffff_ffff),
            "ipAddress": format!("10.{}.{}.{}", rng.below(256), rng.below(256), rng.below(256)),
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) EHRClient/4.2",
            "deviceId": format!("ws-{}", rng.below(2000)),
        },
        "healthcareContext": {
            "patientId": patient,
            "clinicId": format!("clinic-{}", rng.below(40)),
            "departmentId": department,
            "emergencyAccess": rng.below(200) == 0,
            "clinicalJustification": "Continuity of care: reviewing latest results before the scheduled consultation",
        },
        "technicalContext": {
            "endpoint": format!("/fhir/R4/{resource}/{}", rng.below(1_000_000)),
            "httpMethod": "GET",
            "statusCode": 200,
            "durationMs": rng.below(250),
            "requestId": format!("req-{:016x}", rng.next_u64()),
        },
        "details": {
            "application": "ehr-frontend",
            "version": "4.2.1",
            "fields": ["name", "birthDate", "address", "telecom"],
        },
    });
    if rng.below(8) == 0 {
        event["details"]["note"] = json!(format!(
            "Patient SSN 123-45-{:04} and card 4111 1111 1111 1111 were mentioned on the phone",
            rng.below(10_000)
        ));
        event["details"]["password"] = json!("hunter2");
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workload_is_deterministic_valid_and_carries_pii_sometimes() {
        let draw = || {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
            (0..64)
                .map(|n| synthetic_event(&mut rng, n))
                .collect::<Vec<_>>()
        };
        let events = draw();
        assert_eq!(events, draw());
        let validation = crate::config::ValidationConfig::default();
        for event in &events {
            let text = event.to_string();
            assert!((800..2_000).contains(&text.len()), "{text}");
            assert!(
                crate::validate::validate(event, text.len(), &validation).is_ok(),
                "{text}"
            );
        }
        assert!(
            events
                .iter()
                .any(|e| e["details"].get("password").is_some())
        );
        assert!(
            events
                .iter()
                .any(|e| e["details"].get("password").is_none())
        );
        assert_eq!(Rng(7).below(0), 0);
    }
}
