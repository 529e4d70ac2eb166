#!/usr/bin/env node
'use strict'
// Worker: a BullMQ Worker (concurrency 5 by default, the seed's WORKER_CONCURRENCY and
// reliable-processor default) that stores each job in PostgreSQL the way the seed's worker
// does — one INSERT per job into the seed's audit_log table (known fields to columns, the
// rest to `details` jsonb), autocommit-per-event durability (synchronous_commit as the server
// has it: on) — with the chain the seed's docs describe ("Immutable Audit Store": each hash
// covers the previous hash) made correct for several workers:
//
//   CHAIN=db (default): per job, one transaction: take a transaction-scoped advisory lock on
//   the event's log, read the previous event's seq and hash from the table, compute
//   hash = SHA-256(canonical JSON of the stored event + logId + seq + prevHash) and
//   signature = HMAC-SHA256(secret, hash), INSERT, COMMIT. The job is acknowledged to BullMQ
//   only after the COMMIT returned.
//   CHAIN=none: the seed package as it ships: an unchained hash, one autocommit INSERT.
//
// LOG_MODE=single (default) puts every event in one log ("default"); LOG_MODE=org gives each
// organizationId its own log (and lock), as Vellum's log-per-organization option does.
//
// Usage: node worker.js [--concurrency 5] [--chain db|none] [--log single|org]
//        [--queue audit] [--prefix P] [--schema bullmq_bench] [--redis URL] [--db URL]
// Standalone it runs until SIGINT/SIGTERM; under run.js it reports over the IPC channel.

const { Worker } = require('bullmq')
const { Pool } = require('pg')
const lib = require('./lib')

const flags = lib.parseFlags(process.argv.slice(2), {
  concurrency: 'number',
  chain: 'string',
  log: 'string',
  queue: 'string',
  prefix: 'string',
  schema: 'string',
  redis: 'string',
  db: 'string',
})
const concurrency = Math.max(1, flags.concurrency || Number(process.env.WORKER_CONCURRENCY) || 5)
const chain = flags.chain || lib.settings.chain
const logMode = flags.log || lib.settings.logMode
const queueName = flags.queue || lib.settings.queue
const prefix = flags.prefix || lib.settings.prefix
const schema = flags.schema || lib.settings.schema
const { secret, sign } = lib.settings
if (!['db', 'none'].includes(chain)) throw new Error(`--chain must be db or none, not ${chain}`)
if (!['single', 'org'].includes(logMode)) throw new Error(`--log must be single or org, not ${logMode}`)

const T = lib.table(schema)
const INSERT = {
  name: 'vbmq_insert',
  text: `INSERT INTO ${T} ("timestamp", ttl, principal_id, organization_id, action,
           target_resource_type, target_resource_id, status, outcome_description, hash,
           hash_algorithm, event_version, correlation_id, data_classification, retention_policy,
           processing_latency, archived_at, details, log_id, seq, prev_hash, signature)
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21,$22)`,
}
const LOCK = { name: 'vbmq_lock', text: 'SELECT pg_advisory_xact_lock($1, hashtext($2))' }
const HEAD = { name: 'vbmq_head', text: `SELECT seq, hash FROM ${T} WHERE log_id = $1 ORDER BY seq DESC LIMIT 1` }

const pool = new Pool({ connectionString: flags.db || lib.settings.databaseUrl, max: concurrency })

// Statistics since the last reset: commit latency per event (enqueue -> COMMIT returned).
let latencies = []
let committed = 0
let failed = 0
let lastCommitAt = null
let firstError = null
let cpuAtReset = lib.cpuSeconds()

function rowValues(stored, startedAt, logId, seq, prevHash, hash, signature) {
  const v = (k) => (stored[k] === undefined ? null : stored[k])
  return [
    v('timestamp'), v('ttl'), v('principalId'), v('organizationId'), v('action'),
    v('targetResourceType'), v('targetResourceId'), v('status'), v('outcomeDescription'), hash,
    v('hashAlgorithm'), v('eventVersion'), v('correlationId'), v('dataClassification'), v('retentionPolicy'),
    Math.floor(lib.nowMs() - startedAt), v('archivedAt'),
    stored.details === undefined ? null : JSON.stringify(stored.details),
    logId, seq, prevHash, signature,
  ]
}

async function processJob(job) {
  const startedAt = lib.nowMs()
  const { _enqueuedAt: enqueuedAt, ...event } = job.data
  const stored = lib.storedForm(event)
  const logId = lib.logIdFor(event, logMode)
  const client = await pool.connect()
  try {
    if (chain === 'db') {
      await client.query('BEGIN')
      try {
        await client.query({ ...LOCK, values: [lib.LOCK_CLASS, logId] })
        const head = await client.query({ ...HEAD, values: [logId] })
        const seq = head.rows.length ? Number(head.rows[0].seq) + 1 : 0
        const prevHash = head.rows.length ? head.rows[0].hash : lib.ZERO_HASH
        const { hash, signature } = lib.seal(stored, logId, seq, prevHash, secret, sign)
        await client.query({ ...INSERT, values: rowValues(stored, startedAt, logId, seq, prevHash, hash, signature) })
        await client.query('COMMIT')
      } catch (e) {
        await client.query('ROLLBACK').catch(() => {})
        throw e
      }
    } else {
      const { hash, signature } = lib.seal(stored, logId, undefined, undefined, secret, sign)
      await client.query({ ...INSERT, values: rowValues(stored, startedAt, logId, null, null, hash, signature) })
    }
  } finally {
    client.release()
  }
  const at = lib.nowMs()
  if (typeof enqueuedAt === 'number') latencies.push(at - enqueuedAt)
  committed++
  if (lastCommitAt === null || at > lastCommitAt) lastCommitAt = at
}

async function main() {
  await lib.ensureSchema(pool, schema)
  const worker = new Worker(queueName, processJob, {
    connection: lib.redisConnection(flags.redis || lib.settings.redisUrl),
    prefix,
    concurrency,
  })
  worker.on('failed', (job, err) => {
    failed++
    firstError = firstError || String(err && err.message)
  })
  worker.on('error', (err) => {
    firstError = firstError || String(err && err.message)
  })
  await worker.waitUntilReady()

  async function shutdown(code) {
    await worker.close()
    await pool.end()
    process.exit(code)
  }

  if (!process.send) {
    // Standalone: print progress until interrupted.
    console.error(`worker: queue ${prefix}:${queueName}, concurrency ${concurrency}, chain ${chain}, log ${logMode}, table ${T}`)
    let shown = 0
    setInterval(() => {
      if (committed !== shown) {
        shown = committed
        console.error(`committed ${committed}, failed ${failed}`)
      }
    }, 1000).unref()
    process.on('SIGINT', () => shutdown(0))
    process.on('SIGTERM', () => shutdown(0))
    return
  }

  // Under run.js: report progress and hand over statistics on request.
  let reported = -1
  setInterval(() => {
    if (committed + failed !== reported) {
      reported = committed + failed
      process.send({ type: 'progress', committed, failed })
    }
  }, 50).unref()
  process.on('message', async (msg) => {
    if (msg.type === 'reset') {
      latencies = []
      committed = 0
      failed = 0
      lastCommitAt = null
      firstError = null
      reported = -1
      cpuAtReset = lib.cpuSeconds()
      process.send({ type: 'reset-ok' })
    } else if (msg.type === 'stats') {
      process.send({
        type: 'stats',
        latencies,
        committed,
        failed,
        lastCommitAt,
        firstError,
        cpuSeconds: lib.cpuSeconds() - cpuAtReset,
        rssBytes: process.memoryUsage().rss,
      })
    } else if (msg.type === 'stop') {
      await shutdown(0)
    }
  })
  process.on('disconnect', () => shutdown(0))
  process.send({ type: 'ready', concurrency, chain, logMode })
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
