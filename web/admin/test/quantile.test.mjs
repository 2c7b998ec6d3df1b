// The admin page's latency quantiles, from two readings of a cumulative
// histogram as /admin/api/stats gives them.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { quantile } from '../quantile.js'

const reading = (count, counts) => ({
  count,
  buckets: [0.001, 0.01, 0.1, 1].map((le, i) => ({ le, count: counts[i] })),
})

test('interpolates inside the bucket that holds the rank, between two readings', () => {
  const before = reading(10, [10, 10, 10, 10])
  // Between the readings: 100 observations, 50 under 1 ms, 40 in (1, 10] ms, 10 in (10, 100] ms.
  const after = reading(110, [60, 100, 110, 110])
  assert.equal(quantile(0.5, before, after), 0.001) // the 50th is the last of the first bucket
  assert.ok(Math.abs(quantile(0.7, before, after) - (0.001 + 0.009 * (20 / 40))) < 1e-12)
  assert.ok(Math.abs(quantile(0.99, before, after) - (0.01 + 0.09 * (9 / 10))) < 1e-12)
})

test('nothing observed between the readings: no value', () => {
  const r = reading(10, [10, 10, 10, 10])
  assert.equal(quantile(0.99, r, r), null)
})

test('the first reading alone counts from zero', () => {
  assert.equal(quantile(0.5, null, reading(2, [1, 2, 2, 2])), 0.001)
})

test('observations above the last bound give the last bound', () => {
  assert.equal(quantile(0.99, null, reading(100, [0, 0, 0, 50])), 1)
})
