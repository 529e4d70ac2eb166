#!/usr/bin/env node
'use strict'
// One measured comparison run of the seed's stack: N worker processes (worker.js) and one
// producer process (producer.js) on the same events file.
//
// For each run: empty the table (TRUNCATE of bullmq_bench.audit_log only) and the queue
// (obliterate of this harness's own queue/prefix only), reset the workers' counters, start
// the producer, wait until every event is committed (or failed), then print one JSON line:
// end-to-end events/s from the first enqueue to the last COMMIT, and commit latency
// (enqueue -> COMMIT returned to the worker) p50/p90/p99/p99.9/max. After the clock stops it
// verifies the stored log from the table alone (row count, contiguous seq per log, every
// prev_hash equal to the previous row's hash, every hash and signature recomputed).
//
// Workers stay up across runs; a warm-up run (discarded) comes first. With --runs > 1 a last
// line gives median (min-max) over the runs.
//
// Usage: node run.js --events FILE [--workers 1] [--concurrency 5] [--producer-concurrency 64]
//        [--rate R] [--bulk N] [--chain db|none] [--log single|org] [--runs 1]
//        [--warmup 2000] [--probe] [--verify=false] [--timeout 120]

const { fork, spawn, spawnSync } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { Queue } = require('bullmq')
const { Pool } = require('pg')
const lib = require('./lib')

const HERE = __dirname
const flags = lib.parseFlags(process.argv.slice(2), {
  events: 'string',
  workers: 'number',
  concurrency: 'number',
  'producer-concurrency': 'number',
  rate: 'number',
  bulk: 'number',
  chain: 'string',
  log: 'string',
  runs: 'number',
  warmup: 'number',
  probe: 'boolean',
  verify: 'boolean',
  timeout: 'number',
  queue: 'string',
  prefix: 'string',
  schema: 'string',
})
if (!flags.events) {
  console.error('usage: node run.js --events FILE [--workers 1] [--concurrency 5] [--producer-concurrency 64] [--rate R] [--bulk N] [--chain db|none] [--log single|org] [--runs 1] [--warmup 2000] [--probe]')
  process.exit(2)
}
const cfg = {
  events: path.resolve(flags.events),
  workers: flags.workers || 1,
  concurrency: flags.concurrency || 5,
  producerConcurrency: flags['producer-concurrency'] || 64,
  rate: flags.rate || 0,
  bulk: flags.bulk || 0,
  chain: flags.chain || lib.settings.chain,
  log: flags.log || lib.settings.logMode,
  runs: flags.runs || 1,
  warmup: flags.warmup === undefined ? 2000 : flags.warmup,
  probe: !!flags.probe,
  verify: flags.verify !== false,
  timeout: flags.timeout || 120, // seconds without progress before giving up
  queue: flags.queue || lib.settings.queue,
  prefix: flags.prefix || lib.settings.prefix,
  schema: flags.schema || lib.settings.schema,
}

function countLines(file) {
  let n = 0
  const text = fs.readFileSync(file, 'utf8')
  for (const line of text.split('\n')) if (line.trim() !== '') n++
  return n
}

function fsyncProbe() {
  const out = spawnSync('python3', [path.join(HERE, '..', 'fsync-probe.py'), '5', os.tmpdir()], { encoding: 'utf8' })
  return (out.stdout || out.stderr || '').trim()
}

function machineCpu() {
  // [busy, total] jiffies over all CPUs (everyone's work, neighbours included).
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number)
  const idle = f[3] + (f[4] || 0)
  const total = f.reduce((a, b) => a + b, 0)
  return [total - idle, total]
}

async function redisCpu(client) {
  const info = await client.info('cpu')
  const get = (k) => Number((info.match(new RegExp(`${k}:([0-9.]+)`)) || [])[1] || 0)
  return get('used_cpu_user') + get('used_cpu_sys')
}

class WorkerProc {
  constructor(index) {
    this.index = index
    this.progress = { committed: 0, failed: 0 }
    this.waiters = []
    this.child = fork(path.join(HERE, 'worker.js'), [
      '--concurrency', String(cfg.concurrency), '--chain', cfg.chain, '--log', cfg.log,
      '--queue', cfg.queue, '--prefix', cfg.prefix, '--schema', cfg.schema,
    ], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
    this.child.on('message', (msg) => {
      if (msg.type === 'progress') this.progress = { committed: msg.committed, failed: msg.failed }
      // IPC keeps order: progress sent before the reset arrives before its reply.
      if (msg.type === 'reset-ok') this.progress = { committed: 0, failed: 0 }
      const w = this.waiters.findIndex((x) => x.type === msg.type)
      if (w >= 0) this.waiters.splice(w, 1)[0].resolve(msg)
    })
    this.child.on('exit', (code) => {
      this.exited = code
      for (const w of this.waiters) w.reject(new Error(`worker ${index} exited with ${code}`))
      this.waiters = []
    })
  }
  wait(type) {
    if (this.exited !== undefined) return Promise.reject(new Error(`worker ${this.index} exited`))
    return new Promise((resolve, reject) => this.waiters.push({ type, resolve, reject }))
  }
  async request(type, reply) {
    const p = this.wait(reply)
    this.child.send({ type })
    return p
  }
}

function runProducer(limit) {
  const args = [path.join(HERE, 'producer.js'), cfg.events, '--concurrency', String(cfg.producerConcurrency),
    '--queue', cfg.queue, '--prefix', cfg.prefix]
  if (cfg.rate) args.push('--rate', String(cfg.rate))
  if (cfg.bulk) args.push('--bulk', String(cfg.bulk))
  if (limit) args.push('--limit', String(limit))
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    child.stdout.on('data', (d) => (out += d))
    child.on('exit', (code) => {
      const line = out.trim().split('\n').filter((l) => l.startsWith('{')).pop()
      if (code !== 0 || !line) return reject(new Error(`producer exited with ${code}: ${out}`))
      resolve(JSON.parse(line))
    })
  })
}

async function waitForAll(workers, total) {
  let last = -1
  let lastChange = Date.now()
  for (;;) {
    const done = workers.reduce((a, w) => a + w.progress.committed + w.progress.failed, 0)
    if (done >= total) return
    if (done !== last) {
      last = done
      lastChange = Date.now()
    } else if (Date.now() - lastChange > cfg.timeout * 1000) {
      throw new Error(`no progress for ${cfg.timeout} s: ${done} of ${total} events done`)
    }
    await new Promise((r) => setTimeout(r, 20))
  }
}

async function cleanState(pg, queue) {
  await pg.query(`TRUNCATE ${lib.table(cfg.schema)} RESTART IDENTITY`)
  await queue.obliterate({ force: true })
}

// Check the stored log from the table alone.
async function verify(pg) {
  const T = lib.table(cfg.schema)
  const result = { rows: 0, logs: 0, seqGaps: 0, brokenLinks: 0, badHashes: 0, badSignatures: 0 }
  result.rows = Number((await pg.query(`SELECT count(*) AS n FROM ${T}`)).rows[0].n)
  if (cfg.chain === 'db') {
    const logs = await pg.query(`SELECT log_id, count(*) AS n, min(seq) AS lo, max(seq) AS hi FROM ${T} GROUP BY log_id`)
    result.logs = logs.rows.length
    for (const r of logs.rows) if (Number(r.lo) !== 0 || Number(r.hi) + 1 !== Number(r.n)) result.seqGaps++
    result.brokenLinks = Number((await pg.query(
      `SELECT count(*) AS n FROM ${T} a LEFT JOIN ${T} b ON b.log_id = a.log_id AND b.seq = a.seq - 1
        WHERE (a.seq = 0 AND a.prev_hash <> $1) OR (a.seq > 0 AND (b.hash IS NULL OR b.hash <> a.prev_hash))`,
      [lib.ZERO_HASH])).rows[0].n)
  }
  let after = 0
  for (;;) {
    const page = await pg.query(`SELECT * FROM ${T} WHERE id > $1 ORDER BY id LIMIT 5000`, [after])
    if (page.rows.length === 0) break
    for (const row of page.rows) {
      after = row.id
      const seq = row.seq === null ? undefined : Number(row.seq)
      const prev = row.prev_hash === null ? undefined : row.prev_hash
      const { hash, signature } = lib.seal(lib.storedFromRow(row), row.log_id, seq, prev, lib.settings.secret, lib.settings.sign)
      if (hash !== row.hash) result.badHashes++
      if (signature !== row.signature) result.badSignatures++
    }
  }
  result.ok = result.seqGaps === 0 && result.brokenLinks === 0 && result.badHashes === 0 && result.badSignatures === 0
  return result
}

function summarize(values) {
  const v = values.filter((x) => typeof x === 'number').sort((a, b) => a - b)
  if (v.length === 0) return null
  const mid = v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2
  return { median: lib.round(mid, 2), min: lib.round(v[0], 2), max: lib.round(v[v.length - 1], 2) }
}

async function measuredRun(pg, queue, redis, workers, total, label) {
  await cleanState(pg, queue)
  await Promise.all(workers.map((w) => w.request('reset', 'reset-ok')))
  const redisCpu0 = await redisCpu(redis).catch(() => null)
  const cpu0 = machineCpu()
  const producerResult = runProducer(label === 'warmup' ? total : 0)
  const producer = await producerResult
  await waitForAll(workers, total - producer.errors)
  const cpu1 = machineCpu()
  const redisCpu1 = await redisCpu(redis).catch(() => null)
  const stats = await Promise.all(workers.map((w) => w.request('stats', 'stats')))

  const latencies = [].concat(...stats.map((s) => s.latencies)).sort((a, b) => a - b)
  const committed = stats.reduce((a, s) => a + s.committed, 0)
  const failed = stats.reduce((a, s) => a + s.failed, 0)
  const lastCommitAt = Math.max(...stats.map((s) => s.lastCommitAt || 0))
  const seconds = (lastCommitAt - producer.firstEnqueueAt) / 1000
  const result = {
    harness: 'bullmq',
    run: label,
    events: total,
    committed,
    failed,
    firstError: producer.firstError || stats.map((s) => s.firstError).find(Boolean) || null,
    eventsPerSecond: lib.round(committed / seconds, 1),
    seconds: lib.round(seconds),
    latencyMs: {
      p50: lib.round(lib.percentile(latencies, 50)),
      p90: lib.round(lib.percentile(latencies, 90)),
      p99: lib.round(lib.percentile(latencies, 99)),
      p999: lib.round(lib.percentile(latencies, 99.9)),
      max: lib.round(latencies[latencies.length - 1]),
    },
    producer: {
      mode: producer.mode,
      concurrency: producer.concurrency,
      rate: producer.rate,
      enqueueSeconds: producer.seconds,
      enqueuedPerSecond: producer.enqueuedPerSecond,
      cpuSeconds: producer.cpuSeconds,
      errors: producer.errors,
    },
    workers: stats.map((s) => ({ committed: s.committed, cpuSeconds: lib.round(s.cpuSeconds), rssMiB: Math.round(s.rssBytes / 1048576) })),
    redisCpuSeconds: redisCpu0 === null ? null : lib.round(redisCpu1 - redisCpu0),
    machineCpuBusyPct: lib.round((100 * (cpu1[0] - cpu0[0])) / (cpu1[1] - cpu0[1]), 1),
  }
  if (cfg.verify && label !== 'warmup') result.verify = await verify(pg)
  return result
}

async function main() {
  const total = countLines(cfg.events)
  const pg = new Pool({ connectionString: lib.settings.databaseUrl, max: 2 })
  await lib.ensureSchema(pg, cfg.schema)
  const queue = new Queue(cfg.queue, { connection: lib.redisConnection(lib.settings.redisUrl), prefix: cfg.prefix })
  await queue.waitUntilReady()
  const redis = await queue.client

  const pgSettings = {}
  for (const k of ['server_version', 'synchronous_commit', 'fsync', 'wal_sync_method', 'commit_delay']) {
    pgSettings[k] = (await pg.query(`SHOW ${k}`)).rows[0][k]
  }
  const redisSettings = {}
  for (const k of ['appendonly', 'appendfsync']) {
    try {
      redisSettings[k] = (await redis.config('GET', k))[1]
    } catch (e) {
      redisSettings[k] = null
    }
  }
  redisSettings.version = ((await redis.info('server')).match(/redis_version:(\S+)/) || [])[1]
  const bullmqVersion = JSON.parse(fs.readFileSync(path.join(HERE, 'node_modules', 'bullmq', 'package.json'), 'utf8')).version
  const pgClientVersion = JSON.parse(fs.readFileSync(path.join(HERE, 'node_modules', 'pg', 'package.json'), 'utf8')).version
  const context = {
    node: process.version,
    bullmq: bullmqVersion,
    pg: pgClientVersion,
    postgres: pgSettings,
    redis: redisSettings,
    cpus: os.cpus().length,
    loadavg: os.loadavg().map((x) => lib.round(x, 2)),
    config: {
      workers: cfg.workers, workerConcurrency: cfg.concurrency, chain: cfg.chain, log: cfg.log,
      producerConcurrency: cfg.producerConcurrency, rate: cfg.rate || null, bulk: cfg.bulk || null,
      eventsFile: cfg.events, queue: `${cfg.prefix}:${cfg.queue}`, table: lib.table(cfg.schema),
      signatures: lib.settings.sign,
    },
  }
  const probeBefore = cfg.probe ? fsyncProbe() : null

  await cleanState(pg, queue)
  const workers = Array.from({ length: cfg.workers }, (_, i) => new WorkerProc(i))
  const results = []
  try {
    await Promise.all(workers.map((w) => w.wait('ready')))
    if (cfg.warmup > 0) await measuredRun(pg, queue, redis, workers, Math.min(cfg.warmup, total), 'warmup')
    for (let r = 1; r <= cfg.runs; r++) {
      const result = await measuredRun(pg, queue, redis, workers, total, r)
      if (r === 1) result.context = context
      results.push(result)
      if (r === cfg.runs && cfg.probe) {
        result.fsyncProbeBefore = probeBefore
        result.fsyncProbeAfter = fsyncProbe()
      }
      process.stdout.write(JSON.stringify(result) + '\n')
    }
    if (cfg.runs > 1) {
      process.stdout.write(JSON.stringify({
        harness: 'bullmq',
        summary: `median (min-max) of ${cfg.runs} runs`,
        config: context.config,
        eventsPerSecond: summarize(results.map((r) => r.eventsPerSecond)),
        p50Ms: summarize(results.map((r) => r.latencyMs.p50)),
        p99Ms: summarize(results.map((r) => r.latencyMs.p99)),
        p999Ms: summarize(results.map((r) => r.latencyMs.p999)),
        producerCpuSeconds: summarize(results.map((r) => r.producer.cpuSeconds)),
        workerCpuSeconds: summarize(results.map((r) => r.workers.reduce((a, w) => a + w.cpuSeconds, 0))),
        allVerified: results.every((r) => !r.verify || r.verify.ok),
      }) + '\n')
    }
  } finally {
    for (const w of workers) {
      if (w.exited === undefined) w.child.send({ type: 'stop' })
    }
    await Promise.all(workers.map((w) => (w.exited !== undefined ? null : new Promise((r) => w.child.on('exit', r)))))
    await queue.obliterate({ force: true }).catch(() => {})
    await queue.close()
    await pg.end()
  }
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
