// Quantiles from two readings of a Prometheus histogram, for the admin
// page's latency chart (a module of its own so that it is unit-tested).

// quantile estimates the q-quantile of the observations between two
// readings of a cumulative histogram, interpolating inside the bucket
// (as Prometheus's histogram_quantile does). null when nothing was
// observed.
export function quantile(q, before, after) {
  const n = after.count - (before?.count ?? 0)
  if (n <= 0) return null
  const rank = q * n
  let lower = 0
  let below = 0
  for (let i = 0; i < after.buckets.length; i++) {
    const b = after.buckets[i]
    const c = b.count - (before?.buckets[i]?.count ?? 0)
    if (c >= rank) {
      const inBucket = c - below
      return inBucket > 0 ? lower + (b.le - lower) * ((rank - below) / inBucket) : b.le
    }
    lower = b.le
    below = c
  }
  return lower // beyond the last bound
}
