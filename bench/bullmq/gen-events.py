#!/usr/bin/env python3
"""Write N synthetic audit events as NDJSON: the same events `vellum bench` sends.

This is a port of `synthetic_event` in crates/vellum/src/bench.rs (the generator behind
bench/ingest.py; ingest.py itself has no generator to import, it drives the Rust one): same
xorshift seed, same draws in the same order, same key order (serde_json without
`preserve_order` writes keys sorted), so line i here is byte-for-byte the i-th event of
`vellum bench`'s request pool (bodies of `--batch 100` flattened in order). ~1.1 KB events:
10 actions over Patient/Observation/MedicationRequest/Session/Configuration/Report/Invoice/
Backup, 12 organizations, 500 principals, 50,000 patients, session/healthcare/technical
contexts, `details`; one in eight carries PII (SSN, card number, a password) for a redactor.

`vellum bench` reuses a pool of at most 1024 request bodies in turn; with `--batch 1` that is
1024 distinct events repeated. `--distinct 1024` reproduces that stream exactly.

Usage: python3 gen-events.py N [--out FILE] [--distinct K]
"""
import argparse, json, sys

MASK64 = (1 << 64) - 1
SEED = 0x9E3779B97F4A7C15

ACTIONS = [
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
]
DEPARTMENTS = ["cardiology", "oncology", "emergency", "radiology", "pediatrics"]


class Rng:
    """xorshift64, as in bench.rs (wrapping shifts on u64)."""

    def __init__(self, state):
        self.state = state

    def next(self):
        x = self.state
        x ^= (x << 13) & MASK64
        x ^= x >> 7
        x ^= (x << 17) & MASK64
        self.state = x
        return x

    def below(self, n):
        return self.next() % max(n, 1)


def synthetic_event(rng, n):
    # Draw order matters: it follows the Rust source line by line.
    action, resource, klass = ACTIONS[rng.below(len(ACTIONS))]
    org = f"org-{rng.below(12)}"
    principal = f"dr-{rng.below(500)}"
    patient = f"patient-{rng.below(50_000):06}"
    if action.endswith("failure"):
        status = "failure"
    elif rng.below(20) == 0:
        status = "warning"
    else:
        status = "success"
    department = DEPARTMENTS[rng.below(5)]
    principal_type = "service" if rng.below(10) == 0 else "professional"
    target_id = f"{resource.lower()}-{rng.below(1_000_000)}"
    correlation = f"corr-{rng.next():016x}"
    session_id = f"sess-{rng.next() & 0xFFFF_FFFF_FFFF:012x}"
    ip = f"10.{rng.below(256)}.{rng.below(256)}.{rng.below(256)}"
    device = f"ws-{rng.below(2000)}"
    clinic = f"clinic-{rng.below(40)}"
    emergency = rng.below(200) == 0
    endpoint = f"/fhir/R4/{resource}/{rng.below(1_000_000)}"
    duration = rng.below(250)
    request_id = f"req-{rng.next():016x}"
    event = {
        "action": action,
        "status": status,
        "principalId": principal,
        "principalType": principal_type,
        "organizationId": org,
        "targetResourceType": resource,
        "targetResourceId": target_id,
        "outcomeDescription": f"{principal} performed {action} on {resource} for {patient} during routine care, request {n}",
        "dataClassification": klass,
        "correlationId": correlation,
        "sessionContext": {
            "sessionId": session_id,
            "ipAddress": ip,
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) EHRClient/4.2",
            "deviceId": device,
        },
        "healthcareContext": {
            "patientId": patient,
            "clinicId": clinic,
            "departmentId": department,
            "emergencyAccess": emergency,
            "clinicalJustification": "Continuity of care: reviewing latest results before the scheduled consultation",
        },
        "technicalContext": {
            "endpoint": endpoint,
            "httpMethod": "GET",
            "statusCode": 200,
            "durationMs": duration,
            "requestId": request_id,
        },
        "details": {
            "application": "ehr-frontend",
            "version": "4.2.1",
            "fields": ["name", "birthDate", "address", "telecom"],
        },
    }
    if rng.below(8) == 0:
        event["details"]["note"] = (
            f"Patient SSN 123-45-{rng.below(10_000):04} and card 4111 1111 1111 1111 were mentioned on the phone"
        )
        event["details"]["password"] = "hunter2"
    return event


def events(count, distinct=None):
    """The first `count` events of vellum bench's stream (cycling after `distinct`, if given)."""
    rng = Rng(SEED)
    pool = []
    for i in range(count):
        if distinct and i >= distinct:
            yield pool[i % distinct]
            continue
        line = json.dumps(synthetic_event(rng, i + 1), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        if distinct:
            pool.append(line)
        yield line


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("count", type=int)
    ap.add_argument("--out", help="output file (default: stdout)")
    ap.add_argument("--distinct", type=int, help="repeat after this many distinct events (vellum bench --batch 1 uses 1024)")
    args = ap.parse_args()
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    try:
        for line in events(args.count, args.distinct):
            out.write(line)
            out.write("\n")
    finally:
        if args.out:
            out.close()


if __name__ == "__main__":
    main()
