'use strict'
// Shared pieces of the BullMQ comparison harness: settings, the PostgreSQL schema (the seed's
// audit_log table and indexes, in a dedicated schema, plus the chain columns), the stored form
// of an event and its hash/signature, and small measuring helpers.

const crypto = require('node:crypto')

// Settings: environment variables, overridable by --flags where a script accepts them.
const env = process.env
const settings = {
  redisUrl: env.REDIS_URL || 'redis://127.0.0.1:6379',
  databaseUrl: env.DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/test',
  // A dedicated queue name and key prefix, so nothing collides with other users of the Redis.
  queue: env.AUDIT_QUEUE_NAME || 'audit',
  prefix: env.BULLMQ_PREFIX || 'vellum-bench-bullmq',
  schema: env.PG_SCHEMA || 'bullmq_bench',
  secret: env.AUDIT_CRYPTO_SECRET || 'benchmark-secret-0123456789abcdef',
  // db: chain each event to the previous one of its log, read from PostgreSQL under a lock in
  // the inserting transaction; none: no chain (the seed package's own behaviour).
  chain: env.CHAIN || 'db',
  // single: one log for every event (Vellum's default, the seed's single chainHash);
  // org: one log per organizationId (Vellum's AUDIT log-per-organization option).
  logMode: env.LOG_MODE || 'single',
  sign: (env.AUDIT_ENABLE_SIGNATURES || 'true') !== 'false',
}

// Two-key advisory locks (classid, objid) live in a different lock space from the one-bigint
// form, so they cannot collide with other users' advisory locks on the same database.
const LOCK_CLASS = 0x56424d51 // "VBMQ"
const ZERO_HASH = '0'.repeat(64)

function parseFlags(argv, spec) {
  // --name value / --name=value / --flag (boolean). spec: { name: 'string'|'number'|'boolean' }
  const out = { _: [] }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (!a.startsWith('--')) {
      out._.push(a)
      continue
    }
    let [name, value] = a.slice(2).split(/=(.*)/s, 2)
    const type = spec[name]
    if (!type) throw new Error(`unknown flag --${name}`)
    if (type === 'boolean') {
      out[name] = value === undefined ? true : value !== 'false'
      continue
    }
    if (value === undefined) value = argv[++i]
    if (value === undefined) throw new Error(`--${name} needs a value`)
    out[name] = type === 'number' ? Number(value) : value
  }
  return out
}

function redisConnection(url) {
  const u = new URL(url)
  return {
    host: u.hostname,
    port: Number(u.port || 6379),
    db: u.pathname.length > 1 ? Number(u.pathname.slice(1)) : 0,
    password: u.password ? decodeURIComponent(u.password) : undefined,
    username: u.username ? decodeURIComponent(u.username) : undefined,
    maxRetriesPerRequest: null, // required by BullMQ workers
  }
}

function ident(name) {
  if (!/^[a-z_][a-z0-9_]*$/.test(name)) throw new Error(`bad identifier ${name}`)
  return name
}

function table(schema) {
  return `${ident(schema)}.audit_log`
}

// The seed's audit_log table (packages/audit-db schema: columns, defaults and its 16 indexes),
// plus the columns a chained log needs: log_id, seq, prev_hash, signature, and a unique index
// on (log_id, seq) to find the head of a log and to refuse a forked chain.
function schemaSql(schema) {
  const s = ident(schema)
  const t = table(schema)
  const ix = (name, cols) => `CREATE INDEX IF NOT EXISTS ${name} ON ${t} (${cols});`
  return [
    `CREATE SCHEMA IF NOT EXISTS ${s};`,
    `CREATE TABLE IF NOT EXISTS ${t} (
      id serial PRIMARY KEY,
      "timestamp" timestamptz NOT NULL,
      ttl varchar(255),
      principal_id varchar(255),
      organization_id varchar(255),
      action varchar(255) NOT NULL,
      target_resource_type varchar(255),
      target_resource_id varchar(255),
      status varchar(50) NOT NULL,
      outcome_description text,
      hash varchar(64),
      hash_algorithm varchar(50) DEFAULT 'SHA-256',
      event_version varchar(20) DEFAULT '1.0',
      correlation_id varchar(255),
      data_classification varchar(20) DEFAULT 'INTERNAL',
      retention_policy varchar(50) DEFAULT 'standard',
      processing_latency integer,
      archived_at timestamptz,
      details jsonb,
      log_id varchar(255) NOT NULL,
      seq bigint,
      prev_hash varchar(64),
      signature varchar(64)
    );`,
    ix('audit_log_timestamp_idx', '"timestamp"'),
    ix('audit_log_principal_id_idx', 'principal_id'),
    ix('audit_log_organization_id_idx', 'organization_id'),
    ix('audit_log_action_idx', 'action'),
    ix('audit_log_status_idx', 'status'),
    ix('audit_log_hash_idx', 'hash'),
    ix('audit_log_target_resource_type_idx', 'target_resource_type'),
    ix('audit_log_target_resource_id_idx', 'target_resource_id'),
    ix('audit_log_correlation_id_idx', 'correlation_id'),
    ix('audit_log_data_classification_idx', 'data_classification'),
    ix('audit_log_retention_policy_idx', 'retention_policy'),
    ix('audit_log_archived_at_idx', 'archived_at'),
    ix('audit_log_timestamp_status_idx', '"timestamp", status'),
    ix('audit_log_principal_action_idx', 'principal_id, action'),
    ix('audit_log_classification_retention_idx', 'data_classification, retention_policy'),
    ix('audit_log_resource_type_id_idx', 'target_resource_type, target_resource_id'),
    `CREATE UNIQUE INDEX IF NOT EXISTS audit_log_log_seq_idx ON ${t} (log_id, seq);`,
  ]
}

// Create the schema and table if missing; serialized by an advisory lock because two workers
// may start at once.
async function ensureSchema(pool, schema) {
  const client = await pool.connect()
  try {
    await client.query('SELECT pg_advisory_lock($1, 0)', [LOCK_CLASS])
    try {
      for (const stmt of schemaSql(schema)) await client.query(stmt)
    } finally {
      await client.query('SELECT pg_advisory_unlock($1, 0)', [LOCK_CLASS])
    }
  } finally {
    client.release()
  }
}

// Event fields the seed's worker maps to columns; everything else goes to `details` (jsonb).
const COLUMNS = [
  ['timestamp', '"timestamp"'],
  ['ttl', 'ttl'],
  ['principalId', 'principal_id'],
  ['organizationId', 'organization_id'],
  ['action', 'action'],
  ['targetResourceType', 'target_resource_type'],
  ['targetResourceId', 'target_resource_id'],
  ['status', 'status'],
  ['outcomeDescription', 'outcome_description'],
  ['hashAlgorithm', 'hash_algorithm'],
  ['eventVersion', 'event_version'],
  ['correlationId', 'correlation_id'],
  ['dataClassification', 'data_classification'],
  ['retentionPolicy', 'retention_policy'],
  ['archivedAt', 'archived_at'],
]
const MAPPED = new Set(COLUMNS.map(([k]) => k))
const TIMESTAMPS = new Set(['timestamp', 'archivedAt'])

// The stored form of an event: its mapped fields (absent when null) and `details` holding the
// rest, as the seed's worker splits it. It is what the hash covers, with the chain position,
// and it can be rebuilt from a row, so the log can be re-verified from the table alone.
function storedForm(event) {
  const stored = {}
  const details = {}
  for (const [k, v] of Object.entries(event)) {
    if (v === null || v === undefined) continue
    if (TIMESTAMPS.has(k)) stored[k] = new Date(v).toISOString() // as timestamptz gives it back
    else if (MAPPED.has(k)) stored[k] = v
    else if (k !== 'hash' && k !== 'signature') details[k] = v
  }
  if (Object.keys(details).length > 0) stored.details = details
  return stored
}

function storedFromRow(row) {
  const stored = {}
  for (const [k, col] of COLUMNS) {
    let v = row[col.replace(/"/g, '')]
    if (v === null || v === undefined) continue
    if (v instanceof Date) v = v.toISOString()
    stored[k] = v
  }
  if (row.details !== null && row.details !== undefined) stored.details = row.details
  return stored
}

// Deterministic JSON: object keys sorted at every level (what RFC 8785 does for key order;
// the seed's hash also sorts its keys). Vellum hashes the JCS form of the stored event.
function canonical(v) {
  if (v === null || typeof v !== 'object') return JSON.stringify(v)
  if (Array.isArray(v)) return '[' + v.map(canonical).join(',') + ']'
  const keys = Object.keys(v).sort()
  const parts = []
  for (const k of keys) {
    if (v[k] === undefined) continue
    parts.push(JSON.stringify(k) + ':' + canonical(v[k]))
  }
  return '{' + parts.join(',') + '}'
}

// hash = SHA-256 of the stored event with its log, position and the previous hash;
// signature = HMAC-SHA256 under the secret, over the hash (the seed signs its hash string).
function seal(stored, logId, seq, prevHash, secret, sign) {
  const body = canonical({ ...stored, logId, seq, prevHash })
  const hash = crypto.createHash('sha256').update(body, 'utf8').digest('hex')
  const signature = sign ? crypto.createHmac('sha256', secret).update(hash, 'utf8').digest('hex') : null
  return { hash, signature }
}

function logIdFor(event, logMode) {
  return logMode === 'org' && event.organizationId ? String(event.organizationId) : 'default'
}

// Wall-clock milliseconds with sub-millisecond resolution, comparable across processes on
// one machine (each process's timeOrigin comes from the same system clock).
function nowMs() {
  return performance.timeOrigin + performance.now()
}

function percentile(sorted, p) {
  if (sorted.length === 0) return null
  const rank = Math.ceil((p / 100) * sorted.length)
  return sorted[Math.min(Math.max(rank, 1), sorted.length) - 1]
}

function round(x, digits = 3) {
  if (x === null || x === undefined || Number.isNaN(x)) return null
  const f = 10 ** digits
  return Math.round(x * f) / f
}

function cpuSeconds() {
  const u = process.cpuUsage()
  return (u.user + u.system) / 1e6
}

module.exports = {
  settings,
  LOCK_CLASS,
  ZERO_HASH,
  parseFlags,
  redisConnection,
  table,
  schemaSql,
  ensureSchema,
  COLUMNS,
  storedForm,
  storedFromRow,
  canonical,
  seal,
  logIdFor,
  nowMs,
  percentile,
  round,
  cpuSeconds,
}
