// Statistics of the bench: percentiles, medians, summaries of rounds.

/** Nearest-rank percentile of unsorted numbers; NaN for none. */
export function percentile (values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN
  const sorted = [...values].sort((a, b) => a - b)
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil((p / 100) * sorted.length)))
  return sorted[rank - 1]!
}

export function median (values: readonly number[]): number {
  if (values.length === 0) return Number.NaN
  const sorted = [...values].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

type NumericKeys<T> = { [K in keyof T]: T[K] extends number ? K : never }[keyof T]

/** Rounds summed up: the median of each of `medians`, the total of each of `sums`. */
export function summarize<T, M extends NumericKeys<T>, S extends NumericKeys<T>> (
  list: readonly T[], medians: readonly M[], sums: readonly S[]
): Record<M | S, number> {
  const out = {} as Record<M | S, number>
  const values = (key: keyof T): number[] => list.map((r) => r[key] as number)
  for (const key of medians) out[key] = median(values(key))
  for (const key of sums) out[key] = values(key).reduce((total, value) => total + value, 0)
  return out
}

/**
 * One side's throughput over another's, from rounds measured next to each other:
 * the ratio of their medians, and the median of each round's own ratio (the two
 * runs of a round are seconds apart, so other load on the machine moves both).
 */
export function ratios (side: readonly number[], other: readonly number[]): { ofMedians: number, paired: number } {
  return {
    ofMedians: median(side) / median(other),
    paired: median(side.map((value, i) => value / other[i]!))
  }
}
