//! Configuration of the detection rules (`[detection]` in `vellum.toml`), its validation, and
//! the compiled forms the engine runs (action patterns, working hours, DLP regexes).

use regex::{RegexSet, RegexSetBuilder};
use serde::{Deserialize, Serialize};

/// Longest window a rule may use (10 years), so that every window converts to microseconds
/// without overflow.
const MAX_WINDOW_SECS: u64 = 10 * 366 * 86_400;

/// Largest count threshold: a count window keeps `threshold + 1` event times per key, so the
/// threshold is what bounds its memory.
const MAX_COUNT_THRESHOLD: u64 = 100_000;

/// Most keys a rule may track (slab indices are `u32`).
const MAX_TRACKED_KEYS: usize = 50_000_000;

/// Most locations `newLocation.remember` may keep per principal.
const MAX_REMEMBER: usize = 1_024;

/// Largest compiled size of the DLP regexes together, so a pathological pattern fails at
/// load instead of eating memory.
const DLP_REGEX_SIZE_LIMIT: usize = 8 << 20;

/// Detection settings. The default turns every rule on with the thresholds of SPEC §8; every
/// field may be omitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DetectionConfig {
    /// Whether detection runs at all (default true).
    pub enabled: bool,
    /// Keys each rule keeps state for at most (default 100 000); beyond it the key seen least
    /// recently is forgotten, so memory stays bounded whatever the number of principals.
    pub max_tracked_keys: usize,
    /// Repeated failed logins.
    pub failed_logins: FailedLogins,
    /// Bulk access to protected health information.
    pub phi_volume: PhiVolume,
    /// PHI access outside working hours.
    pub off_hours: OffHours,
    /// Access from an address or location a principal has not used recently.
    pub new_location: NewLocation,
    /// Large exports.
    pub export_volume: ExportVolume,
    /// Sensitive data in free text.
    pub dlp: Dlp,
    /// Integrity verification failures.
    pub integrity: Integrity,
    /// Injection-looking input.
    pub injection: Injection,
    /// Emergency ("break-glass") access.
    pub break_glass: BreakGlass,
    /// A usually active source going quiet.
    pub silent_source: SilentSource,
    /// After a rule alerts for a key, seconds during which it does not alert again for that key
    /// (default 300), so an ongoing burst is one alert rather than one per event.
    pub cooldown_secs: u64,
}

impl Default for DetectionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_tracked_keys: 100_000,
            failed_logins: FailedLogins::default(),
            phi_volume: PhiVolume::default(),
            off_hours: OffHours::default(),
            new_location: NewLocation::default(),
            export_volume: ExportVolume::default(),
            dlp: Dlp::default(),
            integrity: Integrity::default(),
            injection: Injection::default(),
            break_glass: BreakGlass::default(),
            silent_source: SilentSource::default(),
            cooldown_secs: 300,
        }
    }
}

/// `failed_logins`: more than `threshold` matching events for one principal (or, without a
/// principal, one IP address) within `windowSecs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct FailedLogins {
    /// Whether the rule runs.
    pub enabled: bool,
    /// Action patterns that count as a failed login; `*` matches any run of characters
    /// (default `["auth.login.failure"]`).
    pub actions: Vec<String>,
    /// Failures tolerated in a window; one more alerts (default 5).
    pub threshold: u64,
    /// Window length in seconds (default 60).
    pub window_secs: u64,
}

impl Default for FailedLogins {
    fn default() -> Self {
        Self {
            enabled: true,
            actions: vec!["auth.login.failure".into()],
            threshold: 5,
            window_secs: 60,
        }
    }
}

/// `phi_volume`: more than `threshold` PHI events (any action, any status) by one principal
/// within `windowSecs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PhiVolume {
    /// Whether the rule runs.
    pub enabled: bool,
    /// PHI events tolerated in a window; one more alerts (default 50).
    pub threshold: u64,
    /// Window length in seconds (default 3600).
    pub window_secs: u64,
}

impl Default for PhiVolume {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: 50,
            window_secs: 3_600,
        }
    }
}

/// `off_hours`: a PHI event whose local time is outside `[start, end)` or on a day not in
/// `days`. When `start > end` the working hours wrap midnight (`22:00`–`06:00` is a night
/// shift), and the part after midnight belongs to the day the shift started; `start == end`
/// is a 24-hour shift starting at `start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct OffHours {
    /// Whether the rule runs.
    pub enabled: bool,
    /// Start of working hours, `HH:MM` local time (default `07:00`).
    pub start: String,
    /// End of working hours (exclusive), `HH:MM` local time, `24:00` allowed (default `19:00`).
    pub end: String,
    /// Working days, `mon` … `sun` (full names accepted, any case); default Monday to Friday.
    pub days: Vec<String>,
    /// The local time's fixed offset from UTC, `+HH:MM`, `-HH:MM` or `Z` (default `+00:00`).
    /// Fixed: daylight-saving changes need a configuration change.
    pub utc_offset: String,
}

impl Default for OffHours {
    fn default() -> Self {
        Self {
            enabled: true,
            start: "07:00".into(),
            end: "19:00".into(),
            days: ["mon", "tue", "wed", "thu", "fri"]
                .into_iter()
                .map(String::from)
                .collect(),
            utc_offset: "+00:00".into(),
        }
    }
}

/// `new_location`: a principal with at least `minHistory` located events uses an IP address
/// (or a `geolocation`) that is not among the last `remember` distinct ones it used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct NewLocation {
    /// Whether the rule runs.
    pub enabled: bool,
    /// Located events a principal needs before a new location is unusual (default 5).
    pub min_history: u64,
    /// Distinct addresses (and, separately, locations) remembered per principal (default 32).
    pub remember: usize,
}

impl Default for NewLocation {
    fn default() -> Self {
        Self {
            enabled: true,
            min_history: 5,
            remember: 32,
        }
    }
}

/// `export_volume`: more than `threshold` records exported by one principal within
/// `windowSecs` (records per event: `details.recordCount`, else 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ExportVolume {
    /// Whether the rule runs.
    pub enabled: bool,
    /// Action patterns that count as an export (default `["*.export", "export.*", "*.export.*"]`).
    pub actions: Vec<String>,
    /// Records tolerated in a window; more alerts (default 10 000).
    pub threshold: u64,
    /// Window length in seconds (default 86 400).
    pub window_secs: u64,
}

impl Default for ExportVolume {
    fn default() -> Self {
        Self {
            enabled: true,
            actions: vec!["*.export".into(), "export.*".into(), "*.export.*".into()],
            threshold: 10_000,
            window_secs: 86_400,
        }
    }
}

/// `dlp`: sensitive data in free text (`outcomeDescription`, the clinical justification, every
/// string under `details` and `changes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Dlp {
    /// Whether the rule runs.
    pub enabled: bool,
    /// Extra regular expressions (Rust `regex` syntax) that must not appear in free text; an
    /// alert names a pattern by its index (`patterns[0]`), never the matched text.
    pub patterns: Vec<String>,
    /// Alert when redaction replaced part of a free-text value (someone wrote an SSN, card
    /// number, … into free text, where it does not belong); default true.
    pub redacted_free_text: bool,
}

impl Default for Dlp {
    fn default() -> Self {
        Self {
            enabled: true,
            patterns: Vec::new(),
            redacted_free_text: true,
        }
    }
}

/// `integrity`: any event whose action matches (the server records failed verifications as
/// events).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Integrity {
    /// Whether the rule runs.
    pub enabled: bool,
    /// Action patterns (default `["integrity.verify.failure", "integrity.*.failure"]`).
    pub actions: Vec<String>,
}

impl Default for Integrity {
    fn default() -> Self {
        Self {
            enabled: true,
            actions: vec![
                "integrity.verify.failure".into(),
                "integrity.*.failure".into(),
            ],
        }
    }
}

/// `injection`: any event in which sanitization found script or SQL injection patterns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Injection {
    /// Whether the rule runs.
    pub enabled: bool,
}

impl Default for Injection {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// `break_glass`: any event with `healthcareContext.emergencyAccess == true`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct BreakGlass {
    /// Whether the rule runs.
    pub enabled: bool,
}

impl Default for BreakGlass {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// Which field identifies a source for `silent_source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SourceKey {
    /// One source per `organizationId` (default).
    #[default]
    OrganizationId,
    /// One source per `principalId` (service accounts, say).
    PrincipalId,
}

impl SourceKey {
    /// Wire spelling, as in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OrganizationId => "organizationId",
            Self::PrincipalId => "principalId",
        }
    }
}

/// `silent_source`: a source that sent at least `minEvents` events sends nothing for longer
/// than `clamp(silenceFactor × its usual gap, minSilenceSecs, maxSilenceSecs)`. The usual gap
/// is an exponentially weighted mean of the gaps between bursts of arrivals (arrivals within
/// one second of a burst's start belong to it, so a source that sends a batch every hour has
/// an hourly gap, not a gap of a few milliseconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SilentSource {
    /// Whether the rule runs.
    pub enabled: bool,
    /// What a source is (default `organizationId`).
    pub key: SourceKey,
    /// Events a source must have sent before its silence means anything (default 20).
    pub min_events: u64,
    /// Silence, in multiples of the usual gap, that is unusual (default 10).
    pub silence_factor: f64,
    /// Shortest silence that alerts, in seconds (default 900).
    pub min_silence_secs: u64,
    /// Longest silence tolerated, in seconds, however irregular the source (default 86 400).
    pub max_silence_secs: u64,
}

impl Default for SilentSource {
    fn default() -> Self {
        Self {
            enabled: true,
            key: SourceKey::OrganizationId,
            min_events: 20,
            silence_factor: 10.0,
            min_silence_secs: 900,
            max_silence_secs: 86_400,
        }
    }
}

/// An invalid detection setting; the message starts with the setting's path, e.g.
/// `detection.offHours.start: must be HH:MM (00:00–23:59), got "7am"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DetectionConfigError(pub String);

fn invalid(field: &str, message: impl std::fmt::Display) -> DetectionConfigError {
    DetectionConfigError(format!("detection.{field}: {message}"))
}

impl DetectionConfig {
    /// Checks every setting (of disabled rules too, so that turning a rule on cannot fail
    /// later) and names the first bad one.
    pub fn validate(&self) -> Result<(), DetectionConfigError> {
        if self.max_tracked_keys == 0 || self.max_tracked_keys > MAX_TRACKED_KEYS {
            return Err(invalid(
                "maxTrackedKeys",
                format!("must be between 1 and {MAX_TRACKED_KEYS}"),
            ));
        }
        let f = &self.failed_logins;
        check_actions("failedLogins.actions", &f.actions)?;
        check_count_threshold("failedLogins.threshold", f.threshold)?;
        check_window("failedLogins.windowSecs", f.window_secs)?;
        check_count_threshold("phiVolume.threshold", self.phi_volume.threshold)?;
        check_window("phiVolume.windowSecs", self.phi_volume.window_secs)?;
        WorkingHours::compile(&self.off_hours)?;
        let n = &self.new_location;
        if n.remember == 0 || n.remember > MAX_REMEMBER {
            return Err(invalid(
                "newLocation.remember",
                format!("must be between 1 and {MAX_REMEMBER}"),
            ));
        }
        check_actions("exportVolume.actions", &self.export_volume.actions)?;
        check_window("exportVolume.windowSecs", self.export_volume.window_secs)?;
        compile_dlp(&self.dlp.patterns)?;
        check_actions("integrity.actions", &self.integrity.actions)?;
        let s = &self.silent_source;
        if s.min_events < 2 {
            return Err(invalid(
                "silentSource.minEvents",
                "must be at least 2 (a usual gap needs two arrivals)",
            ));
        }
        if !s.silence_factor.is_finite() || s.silence_factor <= 0.0 {
            return Err(invalid(
                "silentSource.silenceFactor",
                format!("must be a positive number, got {}", s.silence_factor),
            ));
        }
        check_window("silentSource.minSilenceSecs", s.min_silence_secs)?;
        check_window("silentSource.maxSilenceSecs", s.max_silence_secs)?;
        if s.max_silence_secs < s.min_silence_secs {
            return Err(invalid(
                "silentSource.maxSilenceSecs",
                "must not be less than minSilenceSecs",
            ));
        }
        if self.cooldown_secs > MAX_WINDOW_SECS {
            return Err(invalid(
                "cooldownSecs",
                format!("must be at most {MAX_WINDOW_SECS}"),
            ));
        }
        Ok(())
    }
}

fn check_window(field: &str, secs: u64) -> Result<(), DetectionConfigError> {
    if secs == 0 || secs > MAX_WINDOW_SECS {
        return Err(invalid(
            field,
            format!("must be between 1 and {MAX_WINDOW_SECS} seconds, got {secs}"),
        ));
    }
    Ok(())
}

fn check_count_threshold(field: &str, threshold: u64) -> Result<(), DetectionConfigError> {
    if threshold > MAX_COUNT_THRESHOLD {
        return Err(invalid(
            field,
            format!("must be at most {MAX_COUNT_THRESHOLD} (memory is kept per counted event)"),
        ));
    }
    Ok(())
}

fn check_actions(field: &str, patterns: &[String]) -> Result<(), DetectionConfigError> {
    for (i, pattern) in patterns.iter().enumerate() {
        if pattern.trim().is_empty() || pattern.chars().all(|c| c == '*') {
            return Err(invalid(
                &format!("{field}[{i}]"),
                format!("must name actions (a bare `*` would match every event), got {pattern:?}"),
            ));
        }
    }
    Ok(())
}

/// Converts seconds to microseconds, saturating (validated settings never saturate).
pub(super) fn secs_to_micros(secs: u64) -> i64 {
    i64::try_from(secs)
        .unwrap_or(i64::MAX)
        .saturating_mul(1_000_000)
}

/// An action pattern: `*` matches any run of characters (dots included), everything else
/// itself. Precompiled into its literal pieces so matching does no allocation.
#[derive(Debug, Clone)]
pub(super) struct Glob {
    /// Literal pieces between the stars.
    pieces: Vec<String>,
    /// Whether the pattern starts with `*` (else the first piece is a prefix).
    open_start: bool,
    /// Whether the pattern ends with `*` (else the last piece is a suffix).
    open_end: bool,
}

impl Glob {
    pub(super) fn new(pattern: &str) -> Self {
        Self {
            pieces: pattern.split('*').map(str::to_owned).collect(),
            open_start: pattern.starts_with('*'),
            open_end: pattern.ends_with('*'),
        }
    }

    pub(super) fn compile_all(patterns: &[String]) -> Vec<Self> {
        patterns.iter().map(|p| Self::new(p)).collect()
    }

    pub(super) fn any_match(globs: &[Self], text: &str) -> bool {
        globs.iter().any(|g| g.matches(text))
    }

    pub(super) fn matches(&self, text: &str) -> bool {
        let n = self.pieces.len();
        if n == 1 {
            return self.pieces[0] == text;
        }
        // n >= 2: first piece is anchored at the start, last at the end, middle ones are found
        // leftmost in between (leftmost is optimal for `*`-only patterns).
        let first = &self.pieces[0];
        let last = &self.pieces[n - 1];
        if !self.open_start && !text.starts_with(first.as_str()) {
            return false;
        }
        if text.len() < first.len() + last.len() {
            return false;
        }
        if !self.open_end && !text.ends_with(last.as_str()) {
            return false;
        }
        let mut rest = &text.as_bytes()[first.len()..text.len() - last.len()];
        for piece in &self.pieces[1..n - 1] {
            match find(rest, piece.as_bytes()) {
                Some(at) => rest = &rest[at + piece.len()..],
                None => return false,
            }
        }
        true
    }
}

/// Position of `needle` in `haystack`. Actions and pattern pieces are a few dozen bytes, where
/// this plain scan beats `str::find` (whose two-way searcher costs more to set up than the
/// search itself); it runs for every event.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let Some((&first, rest)) = needle.split_first() else {
        return Some(0);
    };
    if haystack.len() < needle.len() {
        return None;
    }
    (0..=haystack.len() - needle.len())
        .find(|&i| haystack[i] == first && &haystack[i + 1..i + needle.len()] == rest)
}

/// Working hours, compiled: minutes since local midnight, working days (Monday = 0), offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct WorkingHours {
    pub(super) start: u32,
    pub(super) end: u32,
    pub(super) days: [bool; 7],
    pub(super) offset_secs: i64,
}

/// Day names, Monday first.
pub(super) const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const DAY_FULL_NAMES: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

impl WorkingHours {
    pub(super) fn compile(config: &OffHours) -> Result<Self, DetectionConfigError> {
        let start = parse_hhmm(&config.start)
            .filter(|m| *m < 24 * 60)
            .ok_or_else(|| {
                invalid(
                    "offHours.start",
                    format!("must be HH:MM (00:00–23:59), got {:?}", config.start),
                )
            })?;
        let end = parse_hhmm(&config.end).ok_or_else(|| {
            invalid(
                "offHours.end",
                format!("must be HH:MM (00:00–24:00), got {:?}", config.end),
            )
        })?;
        let mut days = [false; 7];
        for (i, name) in config.days.iter().enumerate() {
            let day = parse_day(name).ok_or_else(|| {
                invalid(
                    &format!("offHours.days[{i}]"),
                    format!("must be one of mon, tue, wed, thu, fri, sat, sun, got {name:?}"),
                )
            })?;
            days[day] = true;
        }
        let offset_secs = parse_offset(&config.utc_offset).ok_or_else(|| {
            invalid(
                "offHours.utcOffset",
                format!(
                    "must be +HH:MM or -HH:MM (at most 23:59) or Z, got {:?}",
                    config.utc_offset
                ),
            )
        })?;
        Ok(Self {
            start,
            end,
            days,
            offset_secs,
        })
    }

    /// Local (day of week, minute of day) of a UTC instant.
    pub(super) fn local(&self, utc_micros: i64) -> (usize, u32) {
        let local_secs = utc_micros
            .div_euclid(1_000_000)
            .saturating_add(self.offset_secs);
        let day = local_secs.div_euclid(86_400);
        let minute = local_secs.rem_euclid(86_400) / 60;
        // 1970-01-01 was a Thursday (index 3 with Monday = 0).
        let weekday = (day.rem_euclid(7) + 3) % 7;
        (
            usize::try_from(weekday).unwrap_or(0),
            u32::try_from(minute).unwrap_or(0),
        )
    }

    /// Whether a UTC instant falls in working hours.
    pub(super) fn is_working(&self, utc_micros: i64) -> bool {
        let (weekday, minute) = self.local(utc_micros);
        let previous = (weekday + 6) % 7;
        if self.start < self.end {
            self.days[weekday] && minute >= self.start && minute < self.end
        } else {
            // Wraps midnight (or a 24-hour shift): after `start` is today's shift, before
            // `end` the tail of yesterday's.
            (self.days[weekday] && minute >= self.start)
                || (self.days[previous] && minute < self.end)
        }
    }

    /// `Mon–Fri 07:00–19:00` (or the list of days when not a range).
    pub(super) fn describe(&self) -> String {
        format!(
            "{} {}–{}",
            describe_days(&self.days),
            hhmm(self.start),
            hhmm(self.end)
        )
    }
}

/// `HH:MM` of minutes since midnight.
pub(super) fn hhmm(minutes: u32) -> String {
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

/// `+HH:MM` of an offset in seconds.
pub(super) fn format_offset(secs: i64) -> String {
    let sign = if secs < 0 { '-' } else { '+' };
    let abs = secs.unsigned_abs();
    format!("{sign}{:02}:{:02}", abs / 3600, (abs % 3600) / 60)
}

fn describe_days(days: &[bool; 7]) -> String {
    let on: Vec<usize> = (0..7).filter(|d| days[*d]).collect();
    match on.as_slice() {
        [] => "no day".to_owned(),
        [only] => DAY_NAMES[*only].to_owned(),
        [first, .., last] if last - first + 1 == on.len() => {
            format!("{}–{}", DAY_NAMES[*first], DAY_NAMES[*last])
        }
        _ => on
            .iter()
            .map(|d| DAY_NAMES[*d])
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// Minutes since midnight of `HH:MM` (two digits each, `24:00` allowed).
fn parse_hhmm(text: &str) -> Option<u32> {
    let b = text.as_bytes();
    if b.len() != 5 || b[2] != b':' {
        return None;
    }
    let h = two_digits(b[0], b[1])?;
    let m = two_digits(b[3], b[4])?;
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return None;
    }
    Some(h * 60 + m)
}

fn two_digits(a: u8, b: u8) -> Option<u32> {
    (a.is_ascii_digit() && b.is_ascii_digit())
        .then(|| u32::from(a - b'0') * 10 + u32::from(b - b'0'))
}

/// Seconds east of UTC of `+HH:MM`, `-HH:MM` or `Z`.
fn parse_offset(text: &str) -> Option<i64> {
    if text == "Z" || text == "z" {
        return Some(0);
    }
    let b = text.as_bytes();
    if b.len() != 6 || b[3] != b':' {
        return None;
    }
    let sign = match b[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let h = two_digits(b[1], b[2])?;
    let m = two_digits(b[4], b[5])?;
    if h > 23 || m > 59 {
        return None;
    }
    Some(sign * i64::from(h * 3600 + m * 60))
}

/// Monday = 0 … Sunday = 6; three-letter or full English names, any case.
fn parse_day(text: &str) -> Option<usize> {
    let lower = text.trim().to_ascii_lowercase();
    DAY_FULL_NAMES
        .iter()
        .position(|full| *full == lower || (lower.len() == 3 && full.starts_with(&lower)))
}

/// The DLP patterns as one set (one pass over each string finds every pattern that matches).
pub(super) fn compile_dlp(patterns: &[String]) -> Result<Option<RegexSet>, DetectionConfigError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    for (i, pattern) in patterns.iter().enumerate() {
        if pattern.is_empty() {
            return Err(invalid(
                &format!("dlp.patterns[{i}]"),
                "must not be empty (it would match everything)",
            ));
        }
        if let Err(e) = RegexSetBuilder::new([pattern])
            .size_limit(DLP_REGEX_SIZE_LIMIT)
            .build()
        {
            return Err(invalid(&format!("dlp.patterns[{i}]"), e));
        }
    }
    RegexSetBuilder::new(patterns)
        .size_limit(DLP_REGEX_SIZE_LIMIT)
        .build()
        .map(Some)
        .map_err(|e| invalid("dlp.patterns", e))
}
