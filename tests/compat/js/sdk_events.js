'use strict'
// Drives the official @actyx/os-sdk 0.3.1 against a live swarmnode and prints what it saw as one JSON
// object on stdout. The pytest side (tests/compat/test_sdk_events.py) chooses the inputs and checks the
// output against the node's own HTTP answers, so nothing here decides whether the node is right.
//
//   node sdk_events.js publish-query '{"baseUrl": "http://127.0.0.1:PORT/api/", "semantics": ..., "batches": [[{name, payload}, ...], ...]}'
//   node sdk_events.js subscribe     '{"baseUrl": ..., "semantics": ..., "liveStream": [...], "liveCallback": [...], "expectedHistory": n}'

const { Client, DefaultClientOpts, EventDraft, Ordering, Subscription } = require('@actyx/os-sdk')

const TIMEOUT_MS = 30000

const client = (baseUrl) => {
  // The SDK's documented way to point it at a node that is not on localhost:4454.
  const opts = DefaultClientOpts()
  opts.Endpoints.EventService.BaseUrl = baseUrl
  return Client(opts)
}

const drafts = (semantics, batch) => batch.map((e) => EventDraft.make(semantics, e.name, e.payload))

// Callback-style query, collected into a list (resolves on onDone, rejects on onError).
const queryAll = (sdk, opts) =>
  new Promise((resolve, reject) => {
    const events = []
    sdk.eventService.query({
      ...opts,
      onEvent: (ev) => events.push(ev),
      onDone: () => resolve(events),
      onError: (err) => reject(new Error(`query failed: ${err}`)),
    })
  })

const queryStreamAll = async (sdk, opts) => {
  const events = []
  const stream = await sdk.eventService.queryStream(opts)
  for await (const ev of stream) events.push(ev)
  return events
}

async function publishQuery(cfg) {
  const sdk = client(cfg.baseUrl)
  const es = sdk.eventService
  const before = await es.offsetsPromise()
  for (const batch of cfg.batches) {
    await es.publishPromise({ eventDrafts: drafts(cfg.semantics, batch) })
  }
  const after = await es.offsetsPromise()
  const subscriptions = Subscription.wildcard(cfg.semantics)
  const orders = [Ordering.Lamport, Ordering.LamportReverse, Ordering.SourceOrdered]
  const full = {}
  const bounded = {}
  // Exclusive lower, inclusive upper: (after-4, after-1] per source = the three events before the last.
  const lowerBound = {}
  const upperBound = {}
  for (const [src, off] of Object.entries(after)) {
    lowerBound[src] = off - 4
    upperBound[src] = off - 1
  }
  for (const ordering of orders) {
    full[ordering] = await queryAll(sdk, { subscriptions, ordering, upperBound: after })
    bounded[ordering] = await queryAll(sdk, { subscriptions, ordering, lowerBound, upperBound })
  }
  const stream = await queryStreamAll(sdk, { subscriptions, ordering: Ordering.Lamport, upperBound: after })
  const byName = await queryAll(sdk, {
    subscriptions: Subscription.distributed(cfg.semantics, cfg.batches[0][0].name),
    ordering: Ordering.Lamport,
    upperBound: after,
  })
  const empty = await queryAll(sdk, { subscriptions, ordering: Ordering.Lamport, upperBound: {} })
  // The SDK has no node id call; apps used plain fetch for it.
  const resp = await fetch(`${cfg.baseUrl}v1/events/node_id`)
  const nodeId = { status: resp.status, body: await resp.json() }
  return { nodeId, before, after, lowerBound, upperBound, full, bounded, stream, byName, empty }
}

// Collects events from a callback subscription until `count` arrived, then stops it and waits for onDone.
const subscribeCollect = (sdk, opts, count, afterStart) =>
  new Promise((resolve, reject) => {
    const events = []
    let stop = null
    let stopped = false
    stop = sdk.eventService.subscribe({
      ...opts,
      onEvent: (ev) => {
        events.push(ev)
        if (events.length >= count && !stopped) {
          stopped = true
          stop()
        }
      },
      onDone: () => resolve({ events, done: true }),
      onError: (err) => reject(new Error(`subscribe failed: ${err}`)),
    })
    afterStart().catch(reject)
  })

async function subscribe(cfg) {
  const sdk = client(cfg.baseUrl)
  const es = sdk.eventService
  const subscriptions = Subscription.wildcard(cfg.semantics)

  // 1. Stream style, no lower bound: the whole history, then events published after subscribing.
  const stream = await es.subscribeStream({ subscriptions })
  // The promise resolves on the response headers: the subscription is open before this publish.
  await es.publishPromise({ eventDrafts: drafts(cfg.semantics, cfg.liveStream) })
  const streamEvents = []
  const want = cfg.expectedHistory + cfg.liveStream.length
  for await (const ev of stream) {
    streamEvents.push(ev)
    if (streamEvents.length >= want) break
  }
  stream.cancel()

  // 2. Callback style with a lower bound at the current offsets: only what is published afterwards.
  const lowerBound = await es.offsetsPromise()
  const cb = await subscribeCollect(sdk, { subscriptions, lowerBound }, cfg.liveCallback.length, () =>
    es.publishPromise({ eventDrafts: drafts(cfg.semantics, cfg.liveCallback) }),
  )
  const offsetsAfter = await es.offsetsPromise()
  return { streamEvents, lowerBound, callbackEvents: cb.events, callbackDone: cb.done, offsetsAfter }
}

async function main() {
  const [mode, raw] = process.argv.slice(2)
  const cfg = JSON.parse(raw)
  const modes = { 'publish-query': publishQuery, subscribe }
  if (!(mode in modes)) throw new Error(`unknown mode ${mode}`)
  const timer = setTimeout(() => {
    process.stderr.write(`timed out after ${TIMEOUT_MS} ms\n`)
    process.exit(3)
  }, TIMEOUT_MS)
  const result = await modes[mode](cfg)
  clearTimeout(timer)
  process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(0))
}

main().catch((err) => {
  process.stderr.write(`${err && err.stack ? err.stack : err}\n`)
  process.exit(1)
})
