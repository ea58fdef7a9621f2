'use strict'
// The ActyxOS guide's blob upload, as apps wrote it: npm `request` with a multipart `formData`, then a GET
// of the blob by handle. Prints what it saw as JSON; tests/compat/test_request_upload.py checks the bytes.
//
//   node upload.js '{"blobsUrl": "http://127.0.0.1:PORT/api/v1/blobs", "path": ..., "style": "stream" | "value",
//                    "filename": ..., "contentType": ..., "semantics": ..., "retentionPolicy": {...}, "outPath": ...}'

const fs = require('fs')
const request = require('request')

const TIMEOUT_MS = 60000

const upload = (cfg) =>
  new Promise((resolve, reject) => {
    const blob =
      cfg.style === 'stream'
        ? fs.createReadStream(cfg.path)
        : { value: fs.readFileSync(cfg.path), options: { filename: cfg.filename, contentType: cfg.contentType } }
    const metadata = JSON.stringify({ semantics: cfg.semantics, retentionPolicy: cfg.retentionPolicy })
    request.post({ url: cfg.blobsUrl, formData: { blob, metadata } }, (err, resp, body) => {
      if (err) return reject(err)
      resolve({ status: resp.statusCode, contentType: resp.headers['content-type'], body })
    })
  })

// Streams the blob into outPath (never held whole in memory) and reports status and headers.
const download = (cfg, handle) =>
  new Promise((resolve, reject) => {
    let response = null
    const out = fs.createWriteStream(cfg.outPath)
    request
      .get({ url: `${cfg.blobsUrl}?${handle}` })
      .on('response', (resp) => {
        response = resp
      })
      .on('error', reject)
      .pipe(out)
    out.on('error', reject)
    out.on('finish', () =>
      resolve({
        status: response.statusCode,
        contentType: response.headers['content-type'],
        contentLength: response.headers['content-length'],
        etag: response.headers['etag'],
      }),
    )
  })

async function main() {
  const cfg = JSON.parse(process.argv[2])
  const timer = setTimeout(() => {
    process.stderr.write(`timed out after ${TIMEOUT_MS} ms\n`)
    process.exit(3)
  }, TIMEOUT_MS)
  const up = await upload(cfg)
  let down = null
  if (up.status === 201) down = await download(cfg, JSON.parse(up.body).handle)
  clearTimeout(timer)
  process.stdout.write(JSON.stringify({ upload: up, download: down }) + '\n', () => process.exit(0))
}

main().catch((err) => {
  process.stderr.write(`${err && err.stack ? err.stack : err}\n`)
  process.exit(1)
})
