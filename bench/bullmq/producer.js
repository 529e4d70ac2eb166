#!/usr/bin/env node
'use strict'
// Producer: enqueues audit events from an NDJSON file as BullMQ jobs, the way the seed's
// `Audit.log()` does it: the caller hands over one event, `log()` fills `timestamp` (now),
// `eventVersion`, `hashAlgorithm`, `dataClassification` and `retentionPolicy` defaults, checks
// the required fields, and awaits one `queue.add(queueName, event, opts)` per event. Many
// request handlers call it at once, so `--concurrency` calls are in flight (closed loop:
// each starts its next event when its add resolves), or `--rate` events/s are started on a
// fixed schedule whatever the queue does (open loop; --concurrency is then unused). `--bulk N` instead uses `addBulk` in chunks of N (not the
// seed's usage; for comparison with Vellum's batched requests).
//
// Each event's enqueue time (the scheduled time under --rate, else the moment before its
// add) travels in the job as `_enqueuedAt`, which the worker strips before storing.
//
// Usage: node producer.js EVENTS.ndjson [--concurrency 64] [--rate R] [--bulk N]
//        [--limit N] [--queue audit] [--prefix P] [--redis URL]
// Prints one JSON line: events, first/last enqueue times, seconds, CPU, errors.

const fs = require('node:fs')
const { Queue } = require('bullmq')
const lib = require('./lib')

const REQUIRED = ['action', 'status']

function loadEvents(path, limit) {
  const text = fs.readFileSync(path, 'utf8')
  const events = []
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue
    events.push(JSON.parse(line))
    if (limit && events.length >= limit) break
  }
  return events
}

// What the seed's log() does to an event before queueing it (validation reduced to the
// required fields; the seed's sanitizer and its producer-side hash are not reproduced, the
// hash is made by the worker where the previous hash of the chain is known).
function prepare(details, enqueuedAt) {
  for (const f of REQUIRED) {
    if (details[f] === undefined || details[f] === null || details[f] === '') {
      throw new Error(`event without ${f}`)
    }
  }
  return {
    timestamp: new Date().toISOString(),
    action: details.action,
    status: details.status,
    eventVersion: '1.0',
    hashAlgorithm: 'SHA-256',
    dataClassification: details.dataClassification || 'INTERNAL',
    retentionPolicy: details.retentionPolicy || 'standard',
    ...details,
    _enqueuedAt: enqueuedAt,
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

async function main() {
  const flags = lib.parseFlags(process.argv.slice(2), {
    concurrency: 'number',
    rate: 'number',
    bulk: 'number',
    limit: 'number',
    queue: 'string',
    prefix: 'string',
    redis: 'string',
  })
  const path = flags._[0]
  if (!path) {
    console.error('usage: node producer.js EVENTS.ndjson [--concurrency 64] [--rate R] [--bulk N] [--limit N]')
    process.exit(2)
  }
  const queueName = flags.queue || lib.settings.queue
  const prefix = flags.prefix || lib.settings.prefix
  const concurrency = Math.max(1, flags.concurrency || 64)
  const rate = flags.rate || 0
  const bulk = flags.bulk || 0
  const events = loadEvents(path, flags.limit)

  // The seed's direct connection options: maxRetriesPerRequest null, enableAutoPipelining on.
  const connection = { ...lib.redisConnection(flags.redis || lib.settings.redisUrl), enableAutoPipelining: true }
  // The seed's queue defaults (Audit constructor) and per-add options (Audit.log()).
  const queue = new Queue(queueName, {
    connection,
    prefix,
    defaultJobOptions: { removeOnComplete: 100, removeOnFail: false, attempts: 1 },
  })
  await queue.waitUntilReady()
  const jobOpts = { priority: 0, delay: 0, removeOnComplete: 100 }

  let errors = 0
  let firstError = null
  let next = 0
  let firstEnqueueAt = null
  const cpu0 = lib.cpuSeconds()
  const t0 = lib.nowMs() + 20 // schedule origin for --rate

  // enqueuedAt: the scheduled time under --rate (a late add still counts from when it was
  // due, so a slow queue cannot hide its delay), else the moment before the add.
  async function addOne(i, scheduled) {
    const enqueuedAt = scheduled === undefined ? lib.nowMs() : scheduled
    if (firstEnqueueAt === null) firstEnqueueAt = enqueuedAt
    try {
      const event = prepare(events[i], enqueuedAt)
      await queue.add(queueName, event, jobOpts)
    } catch (e) {
      errors++
      firstError = firstError || String(e && e.message)
    }
  }

  async function addChunk(start, scheduled) {
    const end = Math.min(start + bulk, events.length)
    const enqueuedAt = scheduled === undefined ? lib.nowMs() : scheduled
    if (firstEnqueueAt === null) firstEnqueueAt = enqueuedAt
    try {
      const jobs = []
      for (let i = start; i < end; i++) {
        jobs.push({ name: queueName, data: prepare(events[i], enqueuedAt), opts: jobOpts })
      }
      await queue.addBulk(jobs)
    } catch (e) {
      errors += end - start
      firstError = firstError || String(e && e.message)
    }
  }

  // Closed loop: `concurrency` callers, each starting its next event when its add resolved.
  async function loop() {
    for (;;) {
      const i = next
      if (i >= events.length) return
      if (bulk > 0) {
        next += bulk
        await addChunk(i)
      } else {
        next += 1
        await addOne(i)
      }
    }
  }

  // Open loop: start every event (or chunk) when it is due, whether or not earlier adds have
  // resolved, as independent request handlers would.
  async function schedule() {
    const step = bulk > 0 ? bulk : 1
    const pending = []
    let i = 0
    while (i < events.length) {
      const now = lib.nowMs()
      while (i < events.length && t0 + (i * 1000) / rate <= now) {
        pending.push(bulk > 0 ? addChunk(i, t0 + (i * 1000) / rate) : addOne(i, t0 + (i * 1000) / rate))
        i += step
      }
      if (i < events.length) await sleep(Math.max(0, t0 + (i * 1000) / rate - lib.nowMs()))
    }
    await Promise.all(pending)
  }

  if (rate > 0) await schedule()
  else await Promise.all(Array.from({ length: concurrency }, loop))
  const lastEnqueueAt = lib.nowMs()
  const cpu = lib.cpuSeconds() - cpu0
  await queue.close()

  const seconds = (lastEnqueueAt - firstEnqueueAt) / 1000
  const result = {
    role: 'producer',
    events: events.length,
    mode: bulk > 0 ? `addBulk x${bulk}` : 'add per event',
    concurrency: rate > 0 ? null : concurrency,
    rate: rate || null,
    firstEnqueueAt,
    lastEnqueueAt,
    seconds: lib.round(seconds),
    enqueuedPerSecond: lib.round(events.length / seconds, 1),
    cpuSeconds: lib.round(cpu),
    errors,
    firstError,
  }
  process.stdout.write(JSON.stringify(result) + '\n')
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
